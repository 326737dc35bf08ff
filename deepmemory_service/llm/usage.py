"""What LLM calls cost: tokens from each reply's `usage`, and their price when one is set."""

from __future__ import annotations

from attrs import frozen

from deepmemory_service.platform.config import LLMSettings


@frozen
class Usage:
    """One reply's tokens, as the provider counted them."""

    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_reply(cls, reply: object) -> Usage | None:
        """The `usage` of a chat completion, or None when it has none that makes sense."""
        usage = reply.get("usage") if isinstance(reply, dict) else None
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion)
        ):
            return None
        return cls(prompt, completion)  # type: ignore[arg-type]  # checked just above


@frozen
class Prices:
    """US dollars per million tokens; both 0 means no price is known."""

    input_per_mtok: float
    output_per_mtok: float

    @classmethod
    def of(cls, llm: LLMSettings) -> Prices:
        """The configured provider's prices."""
        return cls(llm.price_input_per_mtok, llm.price_output_per_mtok)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.input_per_mtok <= 0 and self.output_per_mtok <= 0:
            return None
        dollars = prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok
        return round(dollars / 1_000_000, 6)
