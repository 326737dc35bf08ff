"""What the run machinery needs, bundled once per backend app."""

from __future__ import annotations

import attrs

from deepmemory_service.db.database import Database
from deepmemory_service.llm.generators import QuestionGenerator
from deepmemory_service.llm.rate_budget import RateBudget
from deepmemory_service.platform.config import Settings
from deepmemory_service.platform.metrics import Metrics
from deepmemory_service.runs.broadcaster import Broadcaster
from deepmemory_service.runs.events import JobEvents
from deepmemory_service.storage.embedders import Embedder
from deepmemory_service.storage.store import StoreRegistry
from deepmemory_service.storage.upload_gate import UploadGate
from deepmemory_service.training.trainer import Trainer


@attrs.frozen
class Services:
    settings: Settings
    db: Database
    broadcaster: Broadcaster
    events: JobEvents
    generator: QuestionGenerator
    embedder: Embedder
    trainer: Trainer
    stores: StoreRegistry
    metrics: Metrics
    budget: RateBudget
    uploads: UploadGate

    @property
    def instance_id(self) -> str:
        """This instance's name: the owner of the runs it leases, the origin of its events."""
        return self.settings.instance_id
