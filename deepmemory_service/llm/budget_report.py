"""What an operator sees of the LLM rate budget, as this instance holds it: the limits,
the current rate and this instance's share of it, calls waiting and 429s (the debug view's
`llm_budget`, and the `deepmemory_llm_budget_*` samples of `/metrics`)."""

from __future__ import annotations

from typing import Any

from deepmemory_service.llm.rate_budget import RateBudget

Sample = tuple[str, str, dict[str, str], float]

# the view's fields /metrics shows as gauges, by metric name
_GAUGES = {
    "rpm": "deepmemory_llm_budget_rpm",
    "tpm": "deepmemory_llm_budget_tpm",
    "rate_factor": "deepmemory_llm_budget_rate_factor",
    "current_rpm": "deepmemory_llm_budget_current_rpm",
    "current_tpm": "deepmemory_llm_budget_current_tpm",
    "instance_share": "deepmemory_llm_budget_instance_share",
    "calls_waiting": "deepmemory_llm_budget_calls_waiting",
    "paused_for_s": "deepmemory_llm_budget_paused_seconds",
}


def budget_view(budget: RateBudget) -> dict[str, Any]:
    """The budget as the debug view shows it."""
    now = budget.clock()
    rps, tps = budget.rates()
    limits = budget.limits
    synced_at = budget.synced_at
    return {
        "key": budget.key,
        "limited": limits.limited,
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "rate_factor": round(budget.factor, 4),
        "current_rpm": round(limits.rpm * budget.factor, 2),
        "current_tpm": round(limits.tpm * budget.factor, 2),
        "instance_share": round(budget.share, 4),
        "instance_rpm": round(rps * 60, 2),
        "instance_tpm": round(tps * 60, 2),
        "calls_waiting": budget.calls_waiting,
        "users": budget.users,
        "granted": budget.granted,
        "rate_limited": budget.rate_limited_here,
        "rate_limited_all_instances": budget.rate_limited_everywhere,
        "paused_for_s": round(max(0.0, budget.paused_until - now), 3),
        "synced_s_ago": None if synced_at is None else round(now - synced_at, 3),
        "tokens_per_char": round(budget.estimator.per_char, 4),
        "tokens_per_question": round(budget.estimator.per_question, 2),
    }


def budget_samples(budget: RateBudget) -> list[Sample]:
    """The budget's `/metrics` samples."""
    view = budget_view(budget)
    samples: list[Sample] = [(name, "gauge", {}, float(view[key])) for key, name in _GAUGES.items()]
    samples += [
        ("deepmemory_llm_budget_granted_total", "counter", {}, float(view["granted"])),
        ("deepmemory_llm_rate_limited_total", "counter", {}, float(view["rate_limited"])),
    ]
    return samples
