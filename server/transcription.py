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

from config import InferenceConfig
from errors import EndpointError, InferenceError, RequestCancelled
from schemas import Chunk, TranscriptionResponse
from server.dependencies import ServerState
from server.metrics import UNMATCHED

logger = logging.getLogger("uvicorn.error")


def route_label(request: Request) -> str:
    return getattr(request.scope.get("route"), "path", UNMATCHED)


async def transcribe(request: Request, state: ServerState, inputs: Any, config: InferenceConfig, *,
                     on_segments: Any = None, cancelled: threading.Event | None = None) -> TranscriptionResponse:
    """``handler.transcribe`` on the queue; a client that disconnects cancels its request."""
    handler = state.host.ready_handler()
    cancelled = cancelled or threading.Event()
    work = asyncio.ensure_future(state.queue.run_batched(handler, inputs, config, on_segments=on_segments, cancelled=cancelled))
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():  # the client went away first
            cancelled.set()
            work.cancel()
            raise RequestCancelled("the client disconnected; its request was cancelled")
        response: TranscriptionResponse = work.result()
    except EndpointError:
        raise
    except Exception as error:  # inside the model: the message is kept, the traceback goes to the log only
        logger.exception("inference failed")
        raise InferenceError(f"inference failed: {type(error).__name__}: {error}") from None
    finally:
        watcher.cancel()
        if not work.done():
            cancelled.set()
            work.cancel()
    state.metrics.audio_seconds.labels(route_label(request)).inc(response.duration)
    return response


async def transcribe_streaming(request: Request, state: ServerState, inputs: Any, config: InferenceConfig) -> AsyncIterator[list[Chunk] | TranscriptionResponse]:
    """Yields each run of newly final segments as the pipeline produces them, then the response.
    Closing the iterator early (client gone) cancels the request."""
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[list[Chunk]] = asyncio.Queue()
    cancelled = threading.Event()

    def on_segments(chunks: list[Chunk]) -> None:  # called on the decoding thread
        loop.call_soon_threadsafe(arrived.put_nowait, list(chunks))

    work = asyncio.ensure_future(transcribe(request, state, inputs, config, on_segments=on_segments, cancelled=cancelled))
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
