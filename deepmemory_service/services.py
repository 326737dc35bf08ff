"""What the run machinery needs, bundled once per backend app."""

from __future__ import annotations

import attrs

from deepmemory_service.broadcaster import Broadcaster
from deepmemory_service.config import Settings
from deepmemory_service.db import Database
from deepmemory_service.embedders import Embedder
from deepmemory_service.events import JobEvents
from deepmemory_service.generators import QuestionGenerator
from deepmemory_service.metrics import Metrics
from deepmemory_service.rate_budget import RateBudget
from deepmemory_service.store import StoreRegistry
from deepmemory_service.trainers import Trainer
from deepmemory_service.upload_gate import UploadGate


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
