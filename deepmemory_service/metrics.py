"""Process counters, rendered in the Prometheus text format by `/metrics`."""

from __future__ import annotations

import time

import attrs


@attrs.define
class Metrics:
    started_at: float = attrs.field(factory=time.monotonic)
    chunks_generated: int = 0
    pairs_written: int = 0
    generation_failures: int = 0
    training_runs: int = 0
    training_failures: int = 0
    commands: dict[str, int] = attrs.field(factory=dict)

    def count_command(self, name: str) -> None:
        self.commands[name] = self.commands.get(name, 0) + 1


def render(samples: list[tuple[str, str, dict[str, str], float]]) -> str:
    """`samples` are (name, type, labels, value); one HELP-less TYPE line per name."""
    lines: list[str] = []
    typed: set[str] = set()
    for name, kind, labels, value in samples:
        if name not in typed:
            lines.append(f"# TYPE {name} {kind}")
            typed.add(name)
        label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
    return "\n".join(lines) + "\n"
