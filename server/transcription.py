"""Running one request through the queue and the handler: the plain way, and streamed (segments as
the decoding pipeline finalizes them). Both stop the work when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

import audio
from config import InferenceConfig
from errors import EndpointError, InferenceError, RequestCancelled, ServiceUnavailable
from schemas import Chunk, TranscriptionResponse
from server.bodies import body_bytes
from server.dependencies import ServerState
from server.metrics import UNMATCHED

logger = logging.getLogger("uvicorn.error")


def route_label(request: Request) -> str:
    return getattr(request.scope.get("route"), "path", UNMATCHED)


async def transcribe(request: Request, state: ServerState, inputs: Any, config: InferenceConfig, *, admission_wait_s: float | None = None,
                     on_segments: Any = None, cancelled: threading.Event | None = None) -> TranscriptionResponse:
    """``handler.transcribe`` once admitted (``server.admission``: by the audio's seconds, waiting up
    to ``admission_wait_s``), on the queue. A client that disconnects, waiting or running, cancels
    its request; when the shutdown grace period ends, a running request is stopped and answered 503."""
    handler = state.host.ready_handler()
    if hasattr(handler, "check"):  # what the deployment cannot do is said before the audio is looked at
        handler.check(config)
    if isinstance(inputs, str):  # base64 decoded once, here: the header is read before admission
        inputs = audio.as_file_bytes(inputs)
    cancelled = cancelled or threading.Event()
    wait_s = state.settings.admission_wait_s if admission_wait_s is None else admission_wait_s
    # Reads the header (not audio → 400 at once) and charges the body's and the audio's memory.
    admission = state.admission.admit_audio(inputs, config.sampling_rate, wait_s, body_bytes(request))

    async def admitted_run() -> TranscriptionResponse:
        async with admission:
            return await state.queue.run_batched(handler, inputs, config, on_segments=on_segments, cancelled=cancelled)

    work = asyncio.ensure_future(admitted_run())
    watcher = asyncio.ensure_future(_until_disconnected(request))
    shutdown = asyncio.ensure_future(state.admission.shutting_down.wait())
    try:
        await asyncio.wait({work, watcher, shutdown}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            if shutdown.done():
                raise ServiceUnavailable("the server is shutting down and stopped this request before it finished; retry", state.settings.retry_after_seconds)
            raise RequestCancelled("the client disconnected; its request was cancelled")
        response: TranscriptionResponse = work.result()
    except EndpointError:
        raise
    except Exception as error:  # inside the model: the message is kept, the traceback goes to the log only
        logger.exception("inference failed")
        raise InferenceError(f"inference failed: {type(error).__name__}: {error}") from None
    finally:
        watcher.cancel()
        shutdown.cancel()
        if not work.done():
            cancelled.set()
            work.cancel()
    state.metrics.audio_seconds.labels(route_label(request)).inc(response.duration)
    return response


async def transcribe_streaming(request: Request, state: ServerState, inputs: Any, config: InferenceConfig, *, admission_wait_s: float | None = None) -> AsyncIterator[list[Chunk] | TranscriptionResponse]:
    """Yields each run of newly final segments as the pipeline produces them, then the response.
    Closing the iterator early (client gone) cancels the request."""
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[list[Chunk]] = asyncio.Queue()
    cancelled = threading.Event()

    def on_segments(chunks: list[Chunk]) -> None:  # called on the decoding thread
        loop.call_soon_threadsafe(arrived.put_nowait, list(chunks))

    work = asyncio.ensure_future(transcribe(request, state, inputs, config, admission_wait_s=admission_wait_s, on_segments=on_segments, cancelled=cancelled))
    try:
        while not work.done():
            getter = asyncio.ensure_future(arrived.get())
            await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        # Segments are queued on the loop before the result (same thread, in order): drain them.
        while not arrived.empty():
            yield arrived.get_nowait()
        yield work.result()
    finally:
        if not work.done():
            cancelled.set()
            work.cancel()
            with contextlib.suppress(BaseException):
                await work


async def _until_disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read by then: only ``http.disconnect``
    can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
