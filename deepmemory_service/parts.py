"""The configured parts: question generator, LLM rate budget, embedder and trainer, each
built from the settings by name (heavy ones imported lazily)."""

from __future__ import annotations

from deepmemory_service.db.database import Database
from deepmemory_service.llm.budget_math import Limits
from deepmemory_service.llm.budget_sharing import PostgresBudgetStore, budget_key
from deepmemory_service.llm.generators import OfflineQuestionGenerator, QuestionGenerator
from deepmemory_service.llm.rate_budget import RateBudget
from deepmemory_service.platform.config import Settings
from deepmemory_service.storage.embedders import Embedder, HashingEmbedder
from deepmemory_service.training.trainer import Trainer


def build_generator(settings: Settings) -> QuestionGenerator:
    if settings.generator == "llm":
        from deepmemory_service.llm.client import LLMQuestionGenerator

        return LLMQuestionGenerator(settings.llm)
    return OfflineQuestionGenerator()


def build_budget(settings: Settings, db: Database) -> RateBudget:
    """The LLM rate budget of the configured provider key; shared through the database when
    a limit is set, and free of any database work when none is."""
    llm = settings.llm
    limits = Limits(llm.rpm, llm.tpm)
    return RateBudget(
        limits,
        budget_key(llm.base_url, llm.api_key),
        settings.instance_id,
        store=PostgresBudgetStore(db) if limits.limited else None,
    )


def build_embedder(settings: Settings) -> Embedder:
    if settings.embedder == "minilm":
        from deepmemory_service.storage.embedders import MiniLMEmbedder

        return MiniLMEmbedder()
    if settings.embedder == "openai":
        from deepmemory_service.storage.embedders import OpenAIEmbedder

        return OpenAIEmbedder(settings.openai_embeddings)
    return HashingEmbedder()


def build_trainer(settings: Settings) -> Trainer:
    if settings.trainer == "activeloop":
        from deepmemory_service.training.activeloop import ActiveloopTrainer

        return ActiveloopTrainer(
            settings.train, settings.activeloop.token, endpoint=settings.activeloop.endpoint or None
        )
    from deepmemory_service.training.local import LocalTrainer

    return LocalTrainer(settings.train)
