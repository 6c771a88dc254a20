"""The EndpointHandler as an HTTP service (FastAPI + Uvicorn), for every common ASR client.

``create_app(settings, handler_factory)`` builds it (``server.factory``); ``server:app`` is that app
on the environment's settings and the real handler, built on first access so importing this package
loads nothing: ``uvicorn server:app`` (``make serve``). Module map: ``factory`` (app, middleware order,
error mapping), ``routers/`` (``hf``, ``audio`` → ``openai`` / ``tt``, ``ops``), ``dependencies``
(state, auth, readiness, admission), ``inference_queue`` (queue + micro-batcher), ``transcription``
(running one request, plain or streamed), ``streaming`` (delta framing), ``render`` (every response
body), ``bodies`` (reading JSON/multipart), ``middleware``, ``metrics``, ``handler_host``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(*args: Any, **kwargs: Any) -> "FastAPI":
    from server.factory import create_app as build

    return build(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "app":  # `uvicorn server:app`: built once, on first access
        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(f"module 'server' has no attribute {name!r}")
