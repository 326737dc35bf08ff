"""What a generate would cost, asked before starting one: the chunks it would send to the
LLM (those an earlier run's questions do not already cover), the calls, tokens and price.

Prompt tokens are counted, not guessed, where the server has the model's tokenizer
(llama-server's `/apply-template` and `/tokenize`): the messages a call sends, around an
empty chunk, once, plus a sample of the chunks' own texts. Elsewhere they come from the
prompt's length at the rate budget's tokens per character, which every reply's `usage`
corrects. Completion tokens are an allowance per question until replies have shown what the
model writes. `estimate_basis` says which.

Where an LLM's questions are checked, a chunk left short is asked again: until a run of the
user's has shown its calls per chunk, the estimate allows `questions.expected_reasks` more
calls a chunk, each sending the chunk again and asking for what it lacks.
"""

from __future__ import annotations

import uuid
from typing import Literal

from attrs import frozen

from deepmemory_service.llm.client import LLMQuestionGenerator, chat_messages
from deepmemory_service.llm.usage import Prices
from deepmemory_service.models import Chunk
from deepmemory_service.platform.config import GeneratorName, Settings
from deepmemory_service.runs.services import Services

# how the tokens were found: "tokenizer" (the prompt counted by the model's own tokenizer),
# "replies" (lengths at the rates earlier replies' usage showed), "guess" (lengths at first
# rates: nothing has calibrated them), "none" (no LLM calls to count)
Basis = Literal["tokenizer", "replies", "guess", "none"]
# the chunks whose texts are counted in the model's tokens; the rest at their tokens per
# character (a corpus's texts are alike enough: a 32-chunk sample is within 1 % on the
# bundled corpus)
SAMPLE_CHUNKS = 32
# completion tokens a question asked for costs before any reply has shown the model's own
# figure: the prompt asks for short search questions in a JSON list, as its worked example
# shows, which Qwen2.5-Coder-1.5B-Instruct answered with 12.2 to 14.5 tokens a question asked
# in four runs of the bundled corpus (3 questions and the spare; 16 with the earlier prompt,
# which had no example); re-measure when the prompt changes (tests/real_llm prints it)
QUESTION_TOKENS = 13.3
# of the questions a chunk takes, the share a call that asks again asks for (it asks for what
# the chunk lacks, and the spare): 2.2 to 2.5 questions in all on Qwen2.5-Coder-1.5B-Instruct,
# the bundled corpus
REASK_QUESTION_SHARE = 0.45
# a call that asks again sends the chunk again with why its questions were turned down (a
# line of advice a reason, never the questions): 1.07 times a first call's prompt tokens on
# the same model and corpus (1.26 to 1.30 when it quoted the questions turned down and kept)
REASK_PROMPT_SHARE = 1.1


def spare_questions(settings: Settings) -> int:
    """The questions a call asks for beyond what a chunk lacks (where they are checked)."""
    return settings.questions.spare if settings.questions.checks else 0


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
    estimate_basis: Basis


async def _counted_prompt_tokens(
    svc: Services,
    user_id: uuid.UUID,
    source: uuid.UUID | None,
    first_asked: int,
    new: int,
    new_chars: int,
) -> int | None:
    """The prompt tokens of the first calls for `new` chunks (each asking for
    `first_asked` questions) in the model's own tokens, or None when the server has no
    tokenizer to ask."""
    gen = svc.generator
    if not isinstance(gen, LLMQuestionGenerator):
        return None
    session = gen.session()
    fixed = await gen.server.count_chat(session, chat_messages(Chunk(0, ""), first_asked))
    if fixed is None:
        return None
    async with svc.request_db.conn() as conn:
        texts = await conn.generation_estimate_sample(user_id, source, SAMPLE_CHUNKS)
    # one after another, on one connection: llama-server serves each connection with a
    # thread of a small pool, held while the connection is kept alive
    counted = []
    for text in texts:
        count = await gen.server.count_text(session, text)
        if count is None:
            return None
        counted.append(count)
    sample_chars = sum(len(t) for t in texts)
    if len(texts) >= new or sample_chars == 0:
        chunk_tokens = sum(counted)
    else:
        chunk_tokens = round(new_chars * sum(counted) / sample_chars)
    return new * fixed + chunk_tokens


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
    if calls_per_chunk is None:
        checks = settings.questions
        reasks = min(checks.expected_reasks, checks.reasks) if checks.checks else 0.0
        calls_per_chunk = 1.0 + reasks
    calls_per_chunk = max(1.0, calls_per_chunk)
    calls = round(new * calls_per_chunk) if uses_llm else 0
    # a first call's tokens, and those of the calls after it (retries, asking again); each
    # call asks for the questions the chunk lacks and the spares
    spare = spare_questions(settings)
    first_asked = questions_per_chunk + spare
    prompts = 1.0 + (calls_per_chunk - 1.0) * REASK_PROMPT_SHARE
    asked = first_asked + (calls_per_chunk - 1.0) * (
        questions_per_chunk * REASK_QUESTION_SHARE + spare
    )
    prompt_tokens = completion_tokens = 0
    estimate_basis: Basis = "none"
    if uses_llm and new:
        estimator = svc.budget.estimator
        estimate_basis = "replies" if estimator.replies else "guess"
        counted = await _counted_prompt_tokens(svc, user_id, source, first_asked, new, new_chars)
        if counted is not None:
            prompt_tokens = round(counted * prompts)
            estimate_basis = "tokenizer"
        else:
            # every prompt is the same text around its chunk's: the budget's estimates,
            # which learn from the provider's replies, priced per chunk and per character
            fixed = sum(len(m["content"]) for m in chat_messages(Chunk(0, ""), first_asked))
            per_prompt = svc.budget.estimate(fixed, 0)
            first_calls = new * per_prompt + new_chars * estimator.per_char
            prompt_tokens = round(first_calls * prompts)
        per_question = estimator.per_question if estimator.replies else QUESTION_TOKENS
        completion_tokens = round(new * per_question * asked)
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
        estimate_basis=estimate_basis,
    )
