"""What routes depend on: the app's state (settings, metrics, handler, admission, queue), auth, readiness."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request

from config import ServerSettings
from errors import Unauthorized
from server.admission import Admission
from server.handler_host import HandlerHost
from server.inference_queue import InferenceQueue
from server.metrics import Metrics


@dataclass
class ServerState:
    """Everything one app owns; ``create_app`` builds it, routes reach it through ``get_state``."""

    settings: ServerSettings
    metrics: Metrics
    host: HandlerHost
    admission: Admission
    queue: InferenceQueue


def get_state(request: Request) -> ServerState:
    return request.app.state.server


async def require_api_key(request: Request, state: ServerState = Depends(get_state)) -> None:
    """With ``API_KEY`` set, ``Authorization: Bearer <key>`` is required (every route but /health)."""
    if state.settings.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = state.settings.api_key.get_secret_value().encode()
    # Constant time, so the key cannot be guessed byte by byte from response times.
    if not (scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), expected)):
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")


def ready_handler(state: ServerState = Depends(get_state)) -> Any:
    """The loaded handler, or 503 (still loading) / 500 (failed to load) before any body is read."""
    return state.host.ready_handler()
