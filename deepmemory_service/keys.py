"""Every `web.AppKey` of the service, in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from deepmemory_service.config import Settings

if TYPE_CHECKING:
    from deepmemory_service.broadcaster import Broadcaster
    from deepmemory_service.db import Database
    from deepmemory_service.embedders import Embedder
    from deepmemory_service.generators import QuestionGenerator
    from deepmemory_service.metrics import Metrics
    from deepmemory_service.services import Services
    from deepmemory_service.store import StoreRegistry
    from deepmemory_service.supervisor import SupervisorRegistry
    from deepmemory_service.trainers import Trainer

# annotations name the value types; the modules behind them import this one
SETTINGS = web.AppKey("settings", Settings)
SERVICES: web.AppKey[Services] = web.AppKey("services")
DATABASE: web.AppKey[Database] = web.AppKey("database")
BROADCASTER: web.AppKey[Broadcaster] = web.AppKey("broadcaster")
SUPERVISORS: web.AppKey[SupervisorRegistry] = web.AppKey("supervisors")
STORES: web.AppKey[StoreRegistry] = web.AppKey("stores")
EMBEDDER: web.AppKey[Embedder] = web.AppKey("embedder")
GENERATOR: web.AppKey[QuestionGenerator] = web.AppKey("generator")
TRAINER: web.AppKey[Trainer] = web.AppKey("trainer")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
# stops a backend's work and streams; called at shutdown
DRAIN: web.AppKey[Callable[[], Awaitable[None]]] = web.AppKey("drain")
# the backend sub-application, on the root app
BACKEND = web.AppKey("backend", web.Application)
# the gateway's connection pool to the backend
BACKEND_CLIENT = web.AppKey("backend_client", aiohttp.ClientSession)
