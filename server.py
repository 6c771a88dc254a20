"""The EndpointHandler as an HTTP service (FastAPI + Uvicorn), for every common ASR client.

- ``POST /``, ``/predict``: the HF Inference Endpoints contract (JSON, raw ``audio/*``, multipart).
- ``POST /v1/audio/transcriptions|translations`` (and without ``/v1``): OpenAI-compatible multipart,
  and the tt-media-server JSON body that lmms-eval's ``whisper_tt`` client sends.
- ``GET /health``, ``GET /metrics`` (Prometheus), ``/docs``.

Routes only adapt protocols: each turns its request into ``(audio, InferenceConfig)``, runs
``handler.transcribe`` on the one inference queue, and renders the ``TranscriptionResponse``.
Run with ``uvicorn server:app`` (``make serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from config import InferenceConfig, ServerSettings, Task, validate_fields
from errors import EndpointError, InferenceError, InvalidParameters, UnsupportedMediaType
from schemas import TranscriptionResponse

REPO_DIR = Path(__file__).resolve().parent
# Uvicorn configures its own loggers only; this one shows up in its output.
logger = logging.getLogger("uvicorn.error")
settings = ServerSettings()


# --- errors the server adds to errors.py's (same status_code/kind contract, one mapping) ---------


class BadRequest(EndpointError):
    status_code = 400
    kind = "bad_request"


class Unauthorized(EndpointError):
    status_code = 401
    kind = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class PayloadTooLarge(EndpointError):
    status_code = 413
    kind = "payload_too_large"


class ServiceUnavailable(EndpointError):
    """Models still loading, or the queue is full: the client should come back later."""

    status_code = 503
    kind = "unavailable"
    headers = {"Retry-After": str(settings.retry_after_seconds)}


class QueueFull(ServiceUnavailable):
    kind = "queue_full"


# --- metrics (own registry: only what this server measures) ---------------------------------------

REGISTRY = CollectorRegistry()
REQUESTS = Counter("asr_requests", "HTTP requests by route and status.", ["route", "method", "status"], registry=REGISTRY)
LATENCY = Histogram("asr_request_duration_seconds", "HTTP request latency by route.", ["route"], registry=REGISTRY,
                    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
INFERENCE_TIME = Histogram("asr_inference_duration_seconds", "Time in the handler per request (excludes queueing).", registry=REGISTRY,
                           buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
AUDIO_SECONDS = Counter("asr_audio_seconds", "Seconds of audio transcribed.", ["route"], registry=REGISTRY)
ERRORS = Counter("asr_errors", "Error responses by kind.", ["kind"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("asr_queue_depth", "Requests waiting for an inference worker.", registry=REGISTRY)
IN_FLIGHT = Gauge("asr_inferences_in_flight", "Requests being run by the handler now.", registry=REGISTRY)
READY = Gauge("asr_model_ready", "1 once the models are loaded.", registry=REGISTRY)


# --- the inference queue: the one place requests wait for the (not thread-safe) handler -----------


class InferenceQueue:
    """Runs handler calls on ``workers`` threads, off the event loop, so /health and /metrics never
    wait on a model. At most ``workers + max_depth`` requests are admitted at once; the rest get 503
    at once instead of piling up. ``run_batched`` micro-batches: the worker that picks up a
    transcription takes every transcription waiting with it (up to ``max_batch``) into one
    ``handler.transcribe_batch`` call, whose decoder then runs them in the same ``generate`` calls."""

    def __init__(self, workers: int, max_depth: int, max_batch: int = 1):
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._capacity = workers + max_depth
        self._admitted = 0  # touched on the event loop only
        self._lock = threading.Lock()  # guards waiting, _pending and each job's started/abandoned state
        self.waiting = 0
        self._max_batch = max_batch
        self._pending: list[_BatchItem] = []  # transcriptions no worker has taken yet, oldest first

    async def run_batched(self, handler: Any, inputs: Any, config: Any) -> Any:
        """``handler.transcribe(inputs, config)``, possibly together with other waiting requests."""
        if self._max_batch <= 1 or not hasattr(handler, "transcribe_batch"):
            return await self.run(handler.transcribe, inputs, config)
        item = _BatchItem(inputs, config)
        with self._lock:
            self._pending.append(item)
        try:
            return await self.run(self._take_batch, handler, item)
        finally:
            with self._lock:
                if item in self._pending:  # cancelled before any worker took it
                    self._pending.remove(item)

    def _take_batch(self, handler: Any, item: "_BatchItem") -> Any:
        with self._lock:
            batch = [item, *[other for other in self._pending if other is not item][: self._max_batch - 1]] if item in self._pending else []
            for taken in batch:
                self._pending.remove(taken)
        if batch:
            try:
                results = handler.transcribe_batch([(taken.inputs, taken.config) for taken in batch])
            except Exception as error:
                results = [error] * len(batch)
            for taken, result in zip(batch, results):
                taken.result = result
                taken.done.set()
        item.done.wait()  # taken by another worker's batch: its result comes from there
        if isinstance(item.result, Exception):
            raise item.result
        return item.result

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a place for the whole request; taken before the upload is read, so a full server
        refuses cheaply."""
        if self._admitted >= self._capacity:
            raise QueueFull(f"the server is busy: {self._admitted} requests admitted, the queue is full (MAX_QUEUE_DEPTH); retry later")
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        job = {"started": False, "abandoned": False}
        with self._lock:
            self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._work, job, function, *args)
        finally:
            with self._lock:
                if not job["started"]:  # cancelled while queued: the worker will skip it
                    job["abandoned"] = True
                    self.waiting -= 1

    def _work(self, job: dict[str, bool], function: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            if job["abandoned"]:
                return None
            job["started"] = True
            self.waiting -= 1
        IN_FLIGHT.inc()
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            INFERENCE_TIME.observe(time.perf_counter() - started)
            IN_FLIGHT.dec()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _BatchItem:
    """One request waiting to join a micro-batch, and where its result lands."""

    def __init__(self, inputs: Any, config: Any):
        self.inputs, self.config = inputs, config
        self.result: Any = None
        self.done = threading.Event()


# --- models: loaded once, in a thread, while /health answers 503 ----------------------------------


class Models:
    def __init__(self) -> None:
        self.handler: Any = None
        self.error: str | None = None
        # Masked in every error message; the handler's token joins once its settings are read.
        candidates = [settings.api_key.get_secret_value() if settings.api_key else None, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
        self.secrets: list[str] = [value for value in candidates if value]

    def load(self) -> None:
        try:
            from handler import EndpointHandler

            handler = EndpointHandler(path=str(REPO_DIR))
            if handler.settings.token():
                self.secrets.append(handler.settings.token())
            self.handler = handler
            READY.set(1)
            logger.info("models loaded: ASR %s, assistant %s, diarization %s", handler.settings.asr_model, handler.settings.assistant_model, handler.settings.diarization_model)
        except Exception as error:  # the server stays up to report it on /health
            self.error = redact(f"{type(error).__name__}: {error}", self.secrets)
            logger.exception("model loading failed")

    def ready_handler(self) -> Any:
        if self.handler is not None:
            return self.handler
        if self.error:
            raise InferenceError(f"the models failed to load: {self.error}")
        raise ServiceUnavailable("the models are still loading; retry shortly")


def redact(text: str, secret_values: list[str]) -> str:
    for value in secret_values:
        if value:
            text = text.replace(value, "***")
    return text


models = Models()
queue = InferenceQueue(settings.inference_workers, settings.max_queue_depth, settings.micro_batch_size)
QUEUE_DEPTH.set_function(lambda: queue.waiting)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    threading.Thread(target=models.load, name="model-loader", daemon=True).start()
    yield
    queue.shutdown()


app = FastAPI(
    title="Whisper ASR + diarization",
    description="Hugging Face Inference Endpoints, OpenAI-compatible and tt-media-server (lmms-eval whisper_tt) transcription routes over one handler.",
    lifespan=lifespan,
)


# --- error mapping: every error response is made here ---------------------------------------------


def error_response(request: Request, error: EndpointError) -> JSONResponse:
    """EndpointError → status + body. OpenAI-style routes (``/audio/``) answer OpenAI's error object;
    the rest the HF runtime's ``{"error": message}`` (plus the kind)."""
    ERRORS.labels(error.kind).inc()
    message = redact(str(error), models.secrets)[:2000]
    if "/audio/" in request.url.path:
        body: dict[str, Any] = {"error": {"message": message, "type": error.kind, "param": None, "code": error.status_code}}
    else:
        body = {"error": message, "error_type": error.kind}
    return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))


@app.exception_handler(EndpointError)
async def _endpoint_error(request: Request, error: EndpointError) -> JSONResponse:
    return error_response(request, error)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    fields = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in error.errors())
    return error_response(request, InvalidParameters(f"invalid request: {fields}"))


# --- middleware: auth and metrics around everything; the upload limit inside ----------------------


class UploadLimit:
    """413 for bodies over ``max_bytes``: at once from Content-Length, or as a chunked body grows."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = PayloadTooLarge(f"the request body is larger than this server's limit of {self.max_bytes} bytes (MAX_UPLOAD_BYTES)")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await error_response(Request(scope), too_large)(scope, receive, send)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large  # surfaces in the route, mapped by the EndpointError handler
            return message

        await self.app(scope, limited_receive, send)


# Middleware added first sits innermost: the limit's exception then reaches the route's exception
# handler; CORS goes last (outermost) so preflight requests are answered before auth.
app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)


OPEN_PATHS = {"/health"}


@app.middleware("http")
async def authenticate_and_measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    started = time.perf_counter()
    if settings.api_key and request.url.path not in OPEN_PATHS and not authorized(request):
        response: Response = error_response(request, Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'"))
    else:
        try:
            response = await call_next(request)
        except Exception:  # a bug outside the handler: log it, answer without the traceback
            logger.exception("unhandled error on %s", request.url.path)
            response = error_response(request, InferenceError("internal server error"))
    route = request.scope.get("route")
    label = getattr(route, "path", "unmatched")
    REQUESTS.labels(label, request.method, str(response.status_code)).inc()
    LATENCY.labels(label).observe(time.perf_counter() - started)
    return response


def authorized(request: Request) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.api_key.get_secret_value().encode()
    # Constant time, so the key cannot be guessed byte by byte from response times.
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), expected)


if settings.cors_origins.strip():
    app.add_middleware(CORSMiddleware, allow_origins=[o.strip() for o in settings.cors_origins.split(",") if o.strip()], allow_methods=["*"], allow_headers=["*"])


# --- request adapters ------------------------------------------------------------------------------


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRequest(f"the body is not valid JSON ({error})") from None


async def read_form(request: Request) -> tuple[bytes, dict[str, Any]]:
    """A multipart body → (the ``file`` part's bytes, the other fields; ``name[]`` fields as lists)."""
    try:
        form = await request.form(max_files=1, max_fields=64)
    except PayloadTooLarge:
        raise
    except Exception as error:  # malformed multipart (python-multipart / starlette errors)
        raise BadRequest(f"could not parse the multipart body: {error}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadRequest("the multipart body needs a 'file' part holding the audio")
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key == "file":
                continue
            if not isinstance(value, str):
                raise BadRequest(f"unexpected file part {key!r}; only 'file' carries audio")
            if key.endswith("[]"):
                fields.setdefault(key[:-2], []).append(value)
            else:
                fields[key] = value
        return await upload.read(), fields
    finally:
        await form.close()  # the spooled upload files


def query_parameters(request: Request) -> dict[str, str] | None:
    # Values stay strings: InferenceConfig's validation converts "24", "true", "0.2".
    return dict(request.query_params) or None


async def transcribe(request: Request, inputs: Any, config: InferenceConfig) -> TranscriptionResponse:
    handler = models.ready_handler()
    try:
        response: TranscriptionResponse = await queue.run_batched(handler, inputs, config)
    except EndpointError:
        raise
    except Exception as error:  # inside the model: the message is kept, the traceback goes to the log only
        logger.exception("inference failed")
        raise InferenceError(f"inference failed: {type(error).__name__}: {error}") from None
    route = request.scope.get("route")
    AUDIO_SECONDS.labels(getattr(route, "path", "unmatched")).inc(response.duration)
    return response


def ensure_ready() -> None:
    models.ready_handler()


# --- health, metrics -------------------------------------------------------------------------------


@app.get("/health", summary="Readiness: 503 while the models load, 200 when ready (no auth).")
async def health() -> JSONResponse:
    if models.handler is not None:
        return JSONResponse({"status": "ok"})
    if models.error:
        return JSONResponse({"status": "error", "error": models.error}, status_code=500)
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": str(settings.retry_after_seconds)})


@app.get("/metrics", summary="Prometheus metrics.")
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


# --- HF Inference Endpoints contract ---------------------------------------------------------------

HF_BODY_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"type": "object", "properties": {"inputs": {"type": "string", "description": "base64 audio file"}, "parameters": {"type": "object"}}, "required": ["inputs"]}},
            "audio/*": {"schema": {"type": "string", "format": "binary"}, "description": "raw audio; parameters in the query string"},
            "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}, "parameters": {"type": "string", "description": "JSON object"}}, "required": ["file"]}},
        }
    }
}


@app.post("/", summary="HF Inference Endpoints contract", openapi_extra=HF_BODY_DOC)
@app.post("/predict", summary="HF Inference Endpoints contract (alias of POST /)", openapi_extra=HF_BODY_DOC)
async def predict(request: Request) -> JSONResponse:
    ensure_ready()
    async with queue.slot():
        inputs, config = await hf_request(request)
        response = await transcribe(request, inputs, config)
    return JSONResponse(response.model_dump(mode="json"))


async def hf_request(request: Request) -> tuple[Any, InferenceConfig]:
    """What the HF runtime accepts: JSON ``{"inputs", "parameters"}``, a raw audio body with
    parameters in the query string, or (as the blog's server) multipart ``file`` + ``parameters``."""
    kind = media_type(request)
    if kind == "application/json":
        from handler import parse_request

        body = await read_json(request)
        if isinstance(body, dict) and "parameters" not in body and request.query_params:
            body = {**body, "parameters": query_parameters(request)}
        return parse_request(body)
    if kind == "multipart/form-data":
        audio, fields = await read_form(request)
        unknown = set(fields) - {"parameters"}
        if unknown:
            raise InvalidParameters(f"unknown multipart field(s) {sorted(unknown)}; send 'file' and 'parameters' (a JSON object)")
        try:
            parameters = json.loads(fields["parameters"]) if fields.get("parameters") else None
        except json.JSONDecodeError as error:
            raise InvalidParameters(f"'parameters' is not valid JSON ({error})") from None
        return audio, InferenceConfig.parse(parameters)
    if kind.startswith(("audio/", "video/")) or kind in ("", "application/octet-stream"):
        return await request.body(), InferenceConfig.parse(query_parameters(request))
    raise UnsupportedMediaType(f"unsupported Content-Type {kind!r}: send application/json, audio/*, application/octet-stream or multipart/form-data")


# --- OpenAI-compatible and tt-media-server audio routes --------------------------------------------

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


class OpenAITranscriptionForm(BaseModel):
    """The multipart fields of OpenAI's /v1/audio/transcriptions, plus diarization."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="Accepted and ignored: the server runs the model it was started with.")
    language: str | None = None
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float = 0.0
    timestamp_granularities: list[Literal["word", "segment"]] = Field(default_factory=list, validation_alias=AliasChoices("timestamp_granularities", "timestamp_granularities[]"))
    stream: bool = Field(False, description="Streaming is not supported; true is refused.")
    diarize: bool | None = None
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def inference_config(self, task: Task) -> InferenceConfig:
        if self.stream:
            raise InvalidParameters("stream: streaming responses are not supported; send stream=false")
        # Word timestamps imply the segment ones too (the handler returns both).
        timestamps = "word" if "word" in self.timestamp_granularities else "segment"
        parameters = {"task": task.value, "timestamps": timestamps, "temperature": self.temperature, "language": self.language, "prompt": self.prompt or None,
                      "diarize": self.diarize, "num_speakers": self.num_speakers, "min_speakers": self.min_speakers, "max_speakers": self.max_speakers}
        return InferenceConfig.parse({k: v for k, v in parameters.items() if v is not None})


class TTTranscriptionRequest(BaseModel):
    """tt-media-server's JSON body, as lmms-eval's whisper_tt client sends it: ``{"file": b64 WAV, "stream": false}``."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="base64 audio file (whisper_tt: a float32 IEEE WAV at 16 kHz)")
    stream: bool = False
    response_format: str | None = Field(None, description="Accepted for compatibility; the answer is always JSON.")
    is_preprocessing_enabled: bool = Field(True, description="Accepted for compatibility (tt-media-server's VAD switch).")
    perform_diarization: bool = False
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def inference_config(self, task: Task) -> InferenceConfig:
        if self.stream:
            raise InvalidParameters("stream: streaming responses are not supported; send stream=false")
        parameters = {"task": task.value, "language": self.language, "prompt": self.prompt or None, "temperature": self.temperature,
                      "diarize": self.perform_diarization, "num_speakers": self.num_speakers, "min_speakers": self.min_speakers, "max_speakers": self.max_speakers}
        return InferenceConfig.parse({k: v for k, v in parameters.items() if v is not None})


def validated(model: type[BaseModel], fields: Any) -> Any:
    if not isinstance(fields, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(fields).__name__}")
    return validate_fields(model, fields)


AUDIO_BODY_DOC = {
    "requestBody": {
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}, **OpenAITranscriptionForm.model_json_schema()["properties"]}, "required": ["file"]}},
            "application/json": {"schema": TTTranscriptionRequest.model_json_schema()},
        }
    }
}


async def audio_route(request: Request, task: Task) -> Response:
    """JSON → the tt-media-server shape; multipart → OpenAI's. Same behaviour with or without /v1:
    lmms-eval's base URL often ends in /v1 (OPENAI_API_BASE)."""
    ensure_ready()
    async with queue.slot():
        if media_type(request) == "application/json":
            tt = validated(TTTranscriptionRequest, await read_json(request))
            response = await transcribe(request, tt.file, tt.inference_config(task))
            return JSONResponse(render_tt(response, tt.perform_diarization))
        if media_type(request) != "multipart/form-data":
            raise UnsupportedMediaType(f"unsupported Content-Type {media_type(request)!r}: send multipart/form-data (OpenAI) or application/json (tt-media-server)")
        audio, fields = await read_form(request)
        form = validated(OpenAITranscriptionForm, fields)
        config = form.inference_config(task)
        response = await transcribe(request, audio, config)
        return render_openai(response, form, config)


@app.post("/v1/audio/transcriptions", summary="OpenAI-compatible transcription (multipart) or tt-media-server JSON", openapi_extra=AUDIO_BODY_DOC)
@app.post("/audio/transcriptions", summary="tt-media-server / lmms-eval whisper_tt (JSON) or OpenAI multipart", openapi_extra=AUDIO_BODY_DOC)
async def transcriptions(request: Request) -> Response:
    return await audio_route(request, Task.transcribe)


@app.post("/v1/audio/translations", summary="OpenAI-compatible translation to English (multipart) or tt-media-server JSON", openapi_extra=AUDIO_BODY_DOC)
@app.post("/audio/translations", summary="Translation to English: tt-media-server JSON or OpenAI multipart", openapi_extra=AUDIO_BODY_DOC)
async def translations(request: Request) -> Response:
    return await audio_route(request, Task.translate)


# --- renderers -------------------------------------------------------------------------------------


def render_openai(response: TranscriptionResponse, form: OpenAITranscriptionForm, config: InferenceConfig) -> Response:
    if form.response_format == "json":
        return JSONResponse({"text": response.text})
    if form.response_format == "text":
        return PlainTextResponse(response.text + "\n")
    if form.response_format == "srt":
        return PlainTextResponse(render_srt(response))
    if form.response_format == "vtt":
        return PlainTextResponse(render_vtt(response), media_type="text/vtt")
    return JSONResponse(render_verbose_json(response, form, config))


def render_verbose_json(response: TranscriptionResponse, form: OpenAITranscriptionForm, config: InferenceConfig) -> dict[str, Any]:
    """OpenAI's verbose_json, with ``speaker`` on segments and words when diarized. Whisper's
    per-segment statistics (tokens, avg_logprob, no_speech_prob…) are not computed, so not sent."""
    segments = []
    for index, chunk in enumerate(response.chunks):
        segment: dict[str, Any] = {"id": index, "start": chunk.timestamp[0], "end": chunk.timestamp[1], "text": chunk.text, "temperature": config.temperature}
        if chunk.speaker is not None:
            segment["speaker"] = chunk.speaker
        segments.append(segment)
    body: dict[str, Any] = {"task": config.task.value, "language": LANGUAGES.get(response.language or "", response.language), "duration": response.duration, "text": response.text}
    if not form.timestamp_granularities or "segment" in form.timestamp_granularities:
        body["segments"] = segments
    if "word" in form.timestamp_granularities:
        body["words"] = [{"word": w.text, "start": w.start, "end": w.end, **({"speaker": w.speaker} if w.speaker else {})} for w in response.words or []]
    if response.speakers:
        body["speakers"] = sorted({turn.speaker for turn in response.speakers})
    return body


def cues(response: TranscriptionResponse) -> list[tuple[float, float, str]]:
    """Subtitle cues: one per segment, prefixed ``[SPEAKER_00]`` when diarized."""
    return [(c.timestamp[0], c.timestamp[1], f"[{c.speaker}] {c.text}" if c.speaker else c.text) for c in response.chunks]


def clock(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def render_srt(response: TranscriptionResponse) -> str:
    return "".join(f"{i}\n{clock(start, ',')} --> {clock(end, ',')}\n{text}\n\n" for i, (start, end, text) in enumerate(cues(response), 1))


def render_vtt(response: TranscriptionResponse) -> str:
    return "WEBVTT\n\n" + "".join(f"{clock(start, '.')} --> {clock(end, '.')}\n{text}\n\n" for start, end, text in cues(response))


def render_tt(response: TranscriptionResponse, diarized: bool) -> dict[str, Any]:
    """tt-media-server's answer: ``text`` (what whisper_tt reads) and duration; segments and
    speakers when diarization was asked for."""
    body: dict[str, Any] = {"text": response.text, "duration": response.duration, "language": response.language}
    if diarized:
        body["segments"] = [{"id": i, "speaker": c.speaker, "start_time": c.timestamp[0], "end_time": c.timestamp[1], "text": c.text} for i, c in enumerate(response.chunks)]
        body["speakers"] = sorted({turn.speaker for turn in response.speakers})
        body["speaker_count"] = len(body["speakers"])
    return body

