"""ASGI middleware (pure ASGI, so streamed responses and disconnects pass through untouched):
path normalization, the body limits (size, read deadline), and the measurement of every request."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errors import EndpointError, InferenceError, PayloadTooLarge, RequestTimeout
from server.metrics import UNMATCHED, Metrics

logger = logging.getLogger("uvicorn.error")
ErrorResponder = Callable[[Request, EndpointError], object]
_SLASHES = re.compile(r"/{2,}")


class CollapseSlashes:
    """``/v1//audio/transcriptions`` → ``/v1/audio/transcriptions``: a base URL with a trailing
    slash (``OPENAI_API_BASE=http://host:8000/v1/``) is common, and clients then double the slash."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            # In place: the router records the matched route in this same scope, which Measure reads.
            scope["path"] = _SLASHES.sub("/", scope["path"])
            if scope.get("raw_path"):
                scope["raw_path"] = _SLASHES.sub("/", scope["raw_path"].decode("latin-1")).encode("latin-1")
        await self.app(scope, receive, send)


class BodyLimits:
    """The request body's size and time: 413 over ``max_bytes`` (at once from Content-Length, or as a
    chunked body grows), 408 when the body has not fully arrived ``read_timeout_s`` after the request
    started (a client trickling a byte every few seconds holds a connection, never a queue place:
    requests are admitted only once their body is in)."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float, respond: ErrorResponder):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = PayloadTooLarge(f"the request body is larger than this server's limit of {self.max_bytes} bytes (MAX_UPLOAD_BYTES)")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self.respond(Request(scope), too_large)(scope, receive, send)  # type: ignore[operator]
        deadline = time.monotonic() + self.read_timeout_s
        received = 0
        body_complete = False

        async def limited_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:  # afterwards only http.disconnect can come: waited for as long as the request runs
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise RequestTimeout(f"the request body did not arrive within {self.read_timeout_s:g} s (BODY_READ_TIMEOUT_S): {received} bytes received") from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large  # surfaces in the route, mapped by the EndpointError handler
            body_complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


class Measure:
    """Counts every request by route and status (404 and 405 under ``unmatched``) and times it; a
    bug that escapes every handler is logged and answered 500 without its traceback."""

    def __init__(self, app: ASGIApp, metrics: Metrics, respond: ErrorResponder):
        self.app = app
        self.metrics = metrics
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def measured_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, measured_send)
        except Exception:
            logger.exception("unhandled error on %s", scope.get("path"))
            if not response_started:
                await self.respond(Request(scope), InferenceError("internal server error"))(scope, receive, measured_send)  # type: ignore[operator]
        finally:
            label = getattr(scope.get("route"), "path", UNMATCHED)
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)
