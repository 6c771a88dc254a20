"""Streamed responses: text as the decoding pipeline finalizes it, in a protocol's framing (OpenAI
SSE, tt-media-server NDJSON), ending with the full result. Protocols subclass ``StreamText``."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from config import InferenceConfig
from errors import EndpointError, InferenceError, RequestCancelled
from schemas import Chunk, TranscriptionResponse
from server.dependencies import ServerState
from server.transcription import transcribe_streaming

logger = logging.getLogger("uvicorn.error")


class StreamText:
    """Turns runs of final segments into text deltas whose concatenation is the final text
    (segments are joined with one space, as the transcript is), and frames them."""

    def __init__(self) -> None:
        self.sent = ""  # the text streamed so far

    def segments(self, chunks: list[Chunk]) -> bytes:
        out = b""
        for chunk in chunks:
            piece = chunk.text.strip()
            if piece:
                delta = f" {piece}" if self.sent else piece
                self.sent += delta
                out += self.text(delta)
        return out

    def finish(self, response: TranscriptionResponse) -> bytes:
        """What the segments have not said yet (all of it when the pipeline streamed nothing),
        then the protocol's closing frames."""
        rest = ""
        if response.text.startswith(self.sent):
            rest, self.sent = response.text[len(self.sent):], response.text
        else:  # cannot be taken back: the closing frame carries the final text
            logger.warning("streamed segments do not add up to the final text")
        return (self.text(rest) if rest else b"") + self.done(response)

    def text(self, delta: str) -> bytes:
        raise NotImplementedError

    def done(self, response: TranscriptionResponse) -> bytes:
        raise NotImplementedError

    def error(self, error: EndpointError, message: str) -> bytes:
        raise NotImplementedError


async def stream_response(request: Request, state: ServerState, inputs: Any, config: InferenceConfig, framing: StreamText, media_type: str,
                          admission_wait_s: float | None = None) -> StreamingResponse:
    """Starts the request and waits for its first result (so errors before any text, such as audio
    that cannot be decoded or a full server, still get their status), then streams the rest."""
    started = time.perf_counter()
    results = transcribe_streaming(request, state, inputs, config, admission_wait_s=admission_wait_s)
    try:
        first = await anext(results)
    except BaseException:
        await results.aclose()
        raise

    async def frames() -> AsyncIterator[bytes]:
        first_text, ended = True, False
        try:
            item: list[Chunk] | TranscriptionResponse | None = first
            while item is not None:
                frame = framing.segments(item) if isinstance(item, list) else framing.finish(item)
                if frame and first_text and framing.sent:
                    state.metrics.first_text.observe(time.perf_counter() - started)
                    first_text = False
                yield frame
                item = await anext(results, None)
            ended = True
        except RequestCancelled:
            pass  # the client is gone: nobody to tell; counted below
        except EndpointError as error:  # after the status line: the error goes in the stream
            ended = True
            state.metrics.errors.labels(error.kind).inc()
            yield framing.error(error, state.host.redact(str(error)))
        except Exception as error:
            ended = True
            logger.exception("streaming failed")
            failure = InferenceError(f"inference failed: {type(error).__name__}: {error}")
            state.metrics.errors.labels(failure.kind).inc()
            yield framing.error(failure, state.host.redact(str(failure)))
        finally:
            if not ended:  # client disconnected mid-stream (our watcher or Starlette's noticed first)
                state.metrics.errors.labels(RequestCancelled.kind).inc()
            await results.aclose()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not buffer the stream
    return StreamingResponse(frames(), media_type=media_type, headers=headers)
