"""The generation benchmark's printout: markdown tables of the phases' figures and of the
`--phase limits` scenario's."""

from __future__ import annotations

import os
from typing import Any

from generation_limits import LimitSizes  # scripts/, beside this file


def print_phases(
    latency: float,
    c: int,
    m: int,
    clean: dict[str, Any],
    faulty: dict[str, Any],
    resumed: dict[str, Any],
    cancelled: dict[str, Any],
    big_run: dict[str, Any],
) -> None:
    print(
        f"\n## Generation benchmark (stand-in LLM at L={latency:g} ms, C={c}, "
        f"M={m} chunks; {os.cpu_count()} cores)\n"
    )
    print("| measure | figure | target |")
    print("|---|---|---|")
    print(
        f"| throughput, no faults | {clean['chunks_per_s']:.1f} chunks/s = "
        f"{clean['ratio']:.2f} × C/L ({clean['ideal']:.0f}/s) | ≥ 0.9 × C/L |"
    )
    print(
        f"| throughput, 30% faults ({faulty['faults']} faults in {faulty['llm_calls']} "
        f"calls) | {faulty['chunks_per_s']:.1f} chunks/s = {faulty['ratio']:.2f} × C/L, "
        f"run {faulty['status']} | completes |"
    )
    print(
        f"| resume after failure at chunk {resumed['covered']} | {resumed['resume_calls']} "
        f'LLM calls for M−N = {resumed["expected"]}; "{resumed["message"]}"; '
        f"{resumed['final']}, {resumed['pairs']} pairs | exactly M−N |"
    )
    print(
        f"| cancel with C calls of {cancelled['latency_ms'] / 1000:g} s in flight "
        f"({cancelled['tries']} runs) | reply p50 {cancelled['p50_ms']:.0f} ms, max "
        f"{cancelled['max_ms']:.0f} ms; {cancelled['late_calls']} calls began after a reply "
        "| < 1 s, none |"
    )
    print(
        f"| {big_run['chunks']:,}-chunk run at zero latency | {big_run['pairs_per_s']:,.0f} "
        f"pairs/s ({big_run['pairs']:,} pairs in {big_run['seconds']:.1f} s) | ≥ 5,000 |"
    )
    print(
        f"| peak RSS of the service process, {big_run['chunks']:,} chunks | "
        f"{big_run['peak_rss_mb']:.0f} MB (before the run {big_run['rss_before_mb']:.0f} MB) "
        "| < 300 MB |"
    )


def print_limits(size: LimitSizes, shared: dict[str, Any], alone: dict[str, Any]) -> None:
    print(
        f"\n## Provider limit shared by four users over two instances (stand-in at "
        f"R = {size.rpm:g} requests/min, L = {size.latency_ms:g} ms, C = {size.concurrency} "
        f"per run, runs of {', '.join(map(str, size.sizes))} chunks × {size.questions} "
        f"questions; {os.cpu_count()} cores)\n"
    )
    print("| measure | shared budget | per-worker backoff (before) | goal |")
    print("|---|---|---|---|")

    def row(name: str, fmt: Any, goal: str) -> None:
        print(f"| {name} | {fmt(shared)} | {fmt(alone)} | {goal} |")

    row("aggregate throughput", _throughput, "≥ 0.9 × R")
    row(
        "calls answered 429",
        lambda r: f"{r['refused_share']:.1%} ({r['refused']:,} of {r['calls']:,})",
        "≤ 5%",
    )
    row(
        "each user's calls while all four generate, vs a fair quarter",
        lambda r: (
            ", ".join(f"{d:+.0%}" for d in r["share_vs_fair"]) + f" (over {r['window_s']:.1f} s)"
        ),
        "within ±20%",
    )
    row(
        "runs completed, exactly one pair set per chunk",
        lambda r: (
            f"{sum(s == 'generated' for s in r['statuses'])}/4 generated, {sum(r['exact'])}/4 exact"
        ),
        "4/4, 4/4",
    )
    for i, n in enumerate(size.sizes):
        row(
            f"run {i + 1} ({n} chunks): LLM calls, tokens, cost",
            lambda r, i=i: _run_cost(r["runs"][i]),
            "—",
        )
    inc = shared.get("incremental")
    if inc:
        est = inc["estimate"]
        print(
            f"\nIncremental run after training run 1 and adding {inc['added']} documents: the "
            f"estimate said {est['chunks_to_generate']} chunks to generate "
            f"({est['reusable_chunks']} reusable, "
            f"~{est['prompt_tokens'] + est['completion_tokens']:,} tokens, "
            f"${est['cost_usd']:.4f}); the run reused {inc['reused']} chunks, asked "
            f"the LLM about {inc['new']} and made {inc['llm_calls']} calls "
            f"({inc['successes']} answered) — goal: exactly {inc['added']}; {inc['status']}."
        )


def _throughput(r: dict[str, Any]) -> str:
    text = f"{r['throughput_ratio']:.2f} × R ({r['chunks']:,} chunks in {r['seconds']:.1f} s"
    failed = sum(s != "generated" for s in r["statuses"])
    return text + (f", when {failed} of 4 runs had failed)" if failed else ")")


def _run_cost(run: dict[str, Any]) -> str:
    cost = f"${run['cost_usd']:.4f}" if run["cost_usd"] is not None else "—"
    text = (
        f"{run['llm_calls']:,} calls, {run['prompt_tokens']:,} + {run['completion_tokens']:,} "
        f"tokens, {cost}"
    )
    if run["error_message"]:
        text += f"; failed: {run['error_message'][:80]}"
    return text
