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
from deepmemory_service.storage.corpus import Corpora
from deepmemory_service.storage.embedders import Embedder
from deepmemory_service.storage.store import StoreRegistry
from deepmemory_service.storage.upload_gate import UploadGate
from deepmemory_service.training.trainer import Trainer


@attrs.frozen
class Services:
    settings: Settings
    # the users' corpora: the database, vector stores, embedder and upload gate, as a run's
    # work uses them (it waits a database outage out, and retries)
    corpora: Corpora
    # the same, for a request a client waits on: its database waits are bounded, so that it
    # answers 503 in seconds when the database does not answer
    request_corpora: Corpora
    broadcaster: Broadcaster
    events: JobEvents
    generator: QuestionGenerator
    trainer: Trainer
    metrics: Metrics
    budget: RateBudget

    @property
    def instance_id(self) -> str:
        """This instance's name: the owner of the runs it leases, the origin of its events."""
        return self.settings.instance_id

    @property
    def db(self) -> Database:
        """The database as a run's work uses it: patient."""
        return self.corpora.db

    @property
    def request_db(self) -> Database:
        """The database as a request uses it: within the request bounds."""
        return self.request_corpora.db

    @property
    def embedder(self) -> Embedder:
        return self.corpora.embedder

    @property
    def stores(self) -> StoreRegistry:
        return self.corpora.stores

    @property
    def uploads(self) -> UploadGate:
        return self.corpora.uploads
