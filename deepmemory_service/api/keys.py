"""Every `web.AppKey` of the service, in one place: the backend's and the gateway's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from deepmemory_service.platform.config import Settings

# named for the type checker only: a gateway running alone uses these keys too, and need not
# load the run machinery
if TYPE_CHECKING:
    from deepmemory_service.runs.services import Services
    from deepmemory_service.runs.supervisor import SupervisorRegistry

SETTINGS = web.AppKey("settings", Settings)
SERVICES: web.AppKey[Services] = web.AppKey("services")
SUPERVISORS: web.AppKey[SupervisorRegistry] = web.AppKey("supervisors")
# stops a backend's work and streams; called at shutdown
DRAIN: web.AppKey[Callable[[], Awaitable[None]]] = web.AppKey("drain")
# the backend sub-application, on the root app
BACKEND = web.AppKey("backend", web.Application)
# the gateway's connection pools to the backend: one for calls, and one of its own for event
# streams, which hold a connection for a whole job
BACKEND_CLIENT = web.AppKey("backend_client", aiohttp.ClientSession)
BACKEND_STREAMS = web.AppKey("backend_streams", aiohttp.ClientSession)
