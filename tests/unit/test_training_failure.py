"""A training failure's message, as a run shows it: the error, never a server path."""

from __future__ import annotations

from deepmemory_service.runs.train import _reason


def test_a_training_failure_message_names_no_server_path() -> None:
    lost = FileNotFoundError(2, "No such file or directory", "/srv/dm/stores/u.deepmemory.npz")
    assert _reason(lost, 60, "/srv/dm") == (
        "Training failed: FileNotFoundError: No such file or directory"
    )
    odd = RuntimeError("cannot read /srv/dm/stores/u.versions/00000003-abc/embedding")
    assert "/srv/dm" not in _reason(odd, 60, "/srv/dm")
