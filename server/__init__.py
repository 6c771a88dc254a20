"""The EndpointHandler as an HTTP service (FastAPI + Uvicorn), for every common ASR client.

``create_app(settings, handler_factory)`` builds it (``server.factory``); ``server:app`` is that app
on the environment's settings and the real handler, built on first access so importing this package
loads nothing: ``uvicorn server:app``, or ``python -m server`` (``make serve``: adds graceful shutdown). Module map: ``factory`` (app, middleware order,
error mapping), ``routers/`` (``hf``, ``audio`` → ``openai`` / ``tt``, ``ops``), ``dependencies``
(state, auth, readiness), ``admission`` (by audio seconds), ``inference_queue`` (queue + micro-batcher), ``transcription``
(running one request, plain or streamed), ``streaming`` (delta framing), ``render`` (every response
body), ``bodies`` (reading JSON/multipart), ``middleware``, ``metrics``, ``handler_host``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from config import ServerSettings
    from server.handler_host import HandlerFactory


def create_app(settings: ServerSettings | None = None, handler_factory: HandlerFactory | None = None, *, load_in_background: bool = True) -> FastAPI:
    """See ``server.factory.create_app`` (imported here on use: ``import server`` stays cheap)."""
    from server.factory import create_app as build

    return build(settings, handler_factory, load_in_background=load_in_background)


def __getattr__(name: str) -> Any:
    if name == "app":  # `uvicorn server:app`: built once, on first access
        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(f"module 'server' has no attribute {name!r}")
