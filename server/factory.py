"""``create_app(settings, handler_factory)``: the FastAPI app with its state, middleware, error
mapping and routers. Nothing is loaded at import; the handler is built when the app starts."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from config import ServerSettings
from errors import BadRequest, EndpointError, InvalidParameters, MethodNotAllowed, NotFound, RequestCancelled
from server import render
from server.admission import Admission
from server.dependencies import ServerState
from server.handler_host import HandlerFactory, HandlerHost, default_handler_factory
from server.inference_queue import InferenceQueue
from server.metrics import Metrics
from server.middleware import BodyLimits, CollapseSlashes, Measure
from server.routers import audio, hf, ops, realtime, speakers

logger = logging.getLogger("uvicorn.error")


def create_app(settings: ServerSettings | None = None, handler_factory: HandlerFactory | None = None, *, load_in_background: bool = True) -> FastAPI:
    """The server for one handler. ``handler_factory`` (default: the real ``EndpointHandler``) runs
    once at startup, in a thread while /health answers 503 (``load_in_background=False``: before
    startup completes, for tests and embedders that want a ready app)."""
    settings = settings or ServerSettings()
    metrics = Metrics()
    secrets = [settings.api_key.get_secret_value()] if settings.api_key else []
    host = HandlerHost(handler_factory or default_handler_factory, metrics, secrets, settings.retry_after_seconds)
    admission = Admission(settings.inference_workers + settings.max_queue_depth, settings.max_audio_seconds_in_flight, settings.retry_after_seconds, metrics)
    queue = InferenceQueue(settings.inference_workers, settings.micro_batch_size, metrics)
    state = ServerState(settings=settings, metrics=metrics, host=host, admission=admission, queue=queue)

    def load() -> None:
        host.load()
        # A handler whose models run in other processes (Ray Serve replicas) uses no working memory here.
        workers = settings.inference_workers if getattr(host.handler, "runs_models_in_process", True) else 0
        admission.set_memory_budget(settings.memory_budget_gib, workers)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load_in_background:
            threading.Thread(target=load, name="model-loader", daemon=True).start()
        else:
            load()
        yield
        queue.shutdown()

    app = FastAPI(
        title="Whisper ASR + diarization",
        description="Hugging Face Inference Endpoints, OpenAI-compatible and tt-media-server (lmms-eval whisper_tt) transcription routes over one handler.",
        lifespan=lifespan,
        docs_url=None,  # served by the ops router, behind the API key
        redoc_url=None,
        openapi_url=None,
    )
    app.state.server = state
    install_error_mapping(app, state)
    for router in (hf.router, audio.router, speakers.router, realtime.router, ops.router):
        app.include_router(router)

    def respond(request: Request, error: EndpointError) -> JSONResponse:
        return error_response(state, request, error)

    # Added first sits innermost: the body limits' exceptions reach the routes' error mapping;
    # Measure sees every answer; slashes are collapsed before anything matches paths; CORS goes last
    # (outermost) so preflight requests are answered before auth.
    app.add_middleware(BodyLimits, max_bytes=settings.max_upload_bytes, read_timeout_s=settings.body_read_timeout_s, respond=respond)
    app.add_middleware(Measure, metrics=metrics, respond=respond)
    app.add_middleware(CollapseSlashes)
    if settings.cors_origins.strip():
        app.add_middleware(CORSMiddleware, allow_origins=[o.strip() for o in settings.cors_origins.split(",") if o.strip()], allow_methods=["*"], allow_headers=["*"])
    return app


def error_response(state: ServerState, request: Request, error: EndpointError) -> JSONResponse:
    """The one place an error becomes a response: counted by kind, secrets masked."""
    state.metrics.errors.labels(error.kind).inc()
    return render.error_response(request.url.path, error, state.host.redact(str(error)))


def install_error_mapping(app: FastAPI, state: ServerState) -> None:
    @app.exception_handler(EndpointError)
    async def endpoint_error(request: Request, error: EndpointError) -> JSONResponse:
        if isinstance(error, RequestCancelled):
            logger.info("%s %s: %s", request.method, request.url.path, error)
        return error_response(state, request, error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in error.errors())
        return error_response(state, request, InvalidParameters(f"invalid request: {fields}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        """Routing's own answers (404, 405) in our error shape, not FastAPI's ``{"detail"}``."""
        if error.status_code == 404:
            mapped: EndpointError = NotFound(f"no route {request.method} {request.url.path}; see /docs for the routes")
        elif error.status_code == 405:
            allow = (error.headers or {}).get("Allow")
            mapped = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}" + (f"; use {allow}" if allow else ""), allow)
        else:
            mapped = BadRequest(str(error.detail))
            mapped.status_code = error.status_code
        return error_response(state, request, mapped)

    @app.exception_handler(ClientDisconnect)
    async def client_disconnect(request: Request, error: ClientDisconnect) -> JSONResponse:
        # The client left mid-upload: nobody reads this answer; it is counted, not logged as a fault.
        return await endpoint_error(request, RequestCancelled("the client disconnected while sending its request"))
