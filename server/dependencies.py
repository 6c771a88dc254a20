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
    live_sessions: int = 0  # open /v1/realtime sessions (touched on the event loop only)


def get_state(request: Request) -> ServerState:
    return request.app.state.server


async def require_api_key(request: Request, state: ServerState = Depends(get_state)) -> None:
    """With ``API_KEY`` set, ``Authorization: Bearer <key>`` is required (every route but /health)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not key_matches(state.settings, token.strip() if scheme.lower() == "bearer" else None):
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")


def key_matches(settings: ServerSettings, token: str | None) -> bool:
    """Whether ``token`` is the API key (always, when none is set)."""
    if settings.api_key is None:
        return True
    # Constant time, so the key cannot be guessed byte by byte from response times.
    return token is not None and secrets.compare_digest(token.encode(), settings.api_key.get_secret_value().encode())


def ready_handler(state: ServerState = Depends(get_state)) -> Any:
    """The loaded handler, or 503 (still loading) / 500 (failed to load) before any body is read."""
    return state.host.ready_handler()
