"""What a generate would cost, asked before starting one: the chunks it would send to the
LLM (those an earlier run's questions do not already cover), the calls, tokens and price."""

from __future__ import annotations

import uuid

from attrs import frozen

from deepmemory_service.llm.client import SYSTEM_PROMPT, user_prompt
from deepmemory_service.llm.usage import Prices
from deepmemory_service.models import Chunk
from deepmemory_service.platform.config import GeneratorName
from deepmemory_service.runs.services import Services


@frozen
class Estimate:
    total_chunks: int
    reusable_chunks: int
    chunks_to_generate: int
    reuse_from_run_id: uuid.UUID | None
    questions_per_chunk: int
    generator: GeneratorName
    expected_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    # how long the calls take at the provider's limit, if one is set (more while other
    # users share it)
    minutes_at_rate_limit: float | None
    # how long the calls may take: at the rate limit, or at the pace of the user's last runs'
    # calls if that is slower; None when neither is known (no limit, no call made yet)
    expected_minutes: float | None


async def estimate(
    svc: Services, user_id: uuid.UUID, questions_per_chunk: int, regenerate: bool
) -> Estimate:
    settings = svc.settings
    async with svc.request_db.conn() as conn:
        source = None if regenerate else await conn.reuse_source(user_id, questions_per_chunk)
        chunks, reusable, new_chars = await conn.generation_estimate(user_id, source)
        calls_per_chunk = await conn.calls_per_new_chunk(user_id)
        per_call_s = await conn.seconds_per_llm_call(user_id)
    new = chunks - reusable
    uses_llm = settings.generator == "llm"
    calls = round(new * max(1.0, calls_per_chunk or 1.0)) if uses_llm else 0
    prompt_tokens = completion_tokens = 0
    if uses_llm and new:
        # every prompt is the same text around its chunk's: the budget's estimates, which
        # learn from the provider's replies, priced per chunk and per character
        budget = svc.budget
        fixed = len(SYSTEM_PROMPT) + len(user_prompt(Chunk(0, ""), questions_per_chunk))
        per_prompt = budget.estimate(fixed, 0)
        prompt_tokens = round(new * per_prompt + new_chars * budget.estimator.per_char)
        completion_tokens = round(new * questions_per_chunk * budget.estimator.per_question)
    rpm = settings.llm.rpm
    at_limit = calls / rpm if uses_llm and rpm > 0 else None
    at_pace = calls * per_call_s / 60 if uses_llm and per_call_s is not None else None
    known = [m for m in (at_limit, at_pace) if m is not None]
    return Estimate(
        total_chunks=chunks,
        reusable_chunks=reusable,
        chunks_to_generate=new,
        reuse_from_run_id=source if source and reusable else None,
        questions_per_chunk=questions_per_chunk,
        generator=settings.generator,
        expected_calls=calls,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=Prices.of(settings.llm).cost(prompt_tokens, completion_tokens)
        if uses_llm
        else None,
        minutes_at_rate_limit=round(at_limit, 1) if at_limit is not None else None,
        expected_minutes=round(max(known), 2) if known else None,
    )
