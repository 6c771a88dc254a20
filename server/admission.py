"""Admission: which requests may hold audio in memory and wait for the model, decided by what they
cost (seconds of audio) rather than by how many they are.

A request is admitted once its body is in and its duration known (from the header: nothing decoded
yet). Admitted requests together hold at most ``MAX_AUDIO_SECONDS_IN_FLIGHT`` seconds of audio and
number at most ``inference_workers + MAX_QUEUE_DEPTH``; the rest wait, first come first served, for
``ADMISSION_WAIT_S`` (the tt-media-server route, whose client cannot retry, ``TT_ADMISSION_WAIT_S``),
then get 503 + Retry-After. A file longer than the whole budget is refused at once (413).

Memory is budgeted as well (``MEMORY_BUDGET_GIB``): once the models are loaded, what is left of the
budget beyond the process's memory and each worker's working memory (``WORKING_MEMORY_BYTES``) is
what requests may hold, waiting or admitted: their bodies, the decoded file and the 16 kHz buffer
(``request_bytes``, an upper bound). A request that does not fit beside those already held gets
503 at once instead of waiting with its body in memory; one that could never fit gets 413.

On SIGTERM (``drain``) nothing new is admitted, waiting requests get 503, and requests still running
when the grace period ends are stopped and answered 503 (``shutting_down``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import audio
from errors import AudioTooLong, QueueFull, ServiceUnavailable
from server.metrics import Metrics

logger = logging.getLogger("uvicorn.error")  # uvicorn configures its own loggers only

# A file whose container declares no duration (streamed webm, raw ADTS) is charged as if coded at
# 16 kbps, below what any speech codec setting users send: an upper bound on its length.
UNDECLARED_BYTES_PER_SECOND = 2000
# Host memory one running request's stages take at their peak beyond its audio (ASR sections, a
# diarization block; measured on CPU with Whisper base: docs/long-audio.md).
WORKING_MEMORY_BYTES = 1.5 * 2**30


def audio_cost(inputs: Any, sampling_rate: int, budget_seconds: float) -> float:
    """The seconds of audio a request will hold once decoded, read without decoding it."""
    seconds = audio.probe_duration(inputs, sampling_rate)
    if seconds is None:
        seconds = min(len(inputs) / UNDECLARED_BYTES_PER_SECOND, budget_seconds) if isinstance(inputs, bytes) else 0.0
    return seconds


def memory_budget_bytes(budget_gib: float | None) -> float:
    """``MEMORY_BUDGET_GIB``, or 80 % of the container's memory limit (cgroup v2 or v1) where there
    is one, else of the machine's memory."""
    if budget_gib:
        return budget_gib * 2**30
    import psutil

    total = psutil.virtual_memory().total
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return 0.8 * total


def request_bytes(inputs: Any, seconds: float, body_bytes: int) -> int:
    """Memory a request holds until it is answered: its body as received, the file it carries (once
    more if it came base64-encoded or in a form) and the 16 kHz buffer it decodes to."""
    return body_bytes + (len(inputs) if isinstance(inputs, bytes) else 0) + audio.buffer_bytes(seconds)


class Admission:
    def __init__(self, max_requests: int, max_audio_seconds: float, retry_after_seconds: int, metrics: Metrics | None = None):
        self.max_requests = max_requests
        self.max_audio_seconds = max_audio_seconds
        self.retry_after = retry_after_seconds
        self.max_bytes = math.inf  # set by ``set_memory_budget`` once the models are loaded
        self.held_bytes = 0  # by requests waiting or admitted
        self.requests = 0  # admitted now; all state is touched on the event loop only
        self.audio_seconds = 0.0
        self._waiting: collections.deque[tuple[float, asyncio.Future[None]]] = collections.deque()
        self.draining = False
        self.shutting_down = asyncio.Event()  # set when the grace period is over: running requests stop
        if metrics is not None:
            metrics.watch_admission(lambda: self.audio_seconds, lambda: self.waiting)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def set_memory_budget(self, budget_gib: float | None, workers: int) -> None:
        """Requests may hold what the budget (``memory_budget_bytes``) leaves beside this process as
        it is now (models loaded) and ``workers`` in-process workers' working memory."""
        import psutil

        self.max_bytes = max(0.0, memory_budget_bytes(budget_gib) - psutil.Process().memory_info().rss - workers * WORKING_MEMORY_BYTES)
        if self.max_bytes <= 0 and budget_gib is None:
            # The default budget of a small machine: refusing every request would be worse than no memory limit.
            logger.warning("80%% of this machine's memory leaves nothing for requests beside the models; the memory budget is off (set MEMORY_BUDGET_GIB)")
            self.max_bytes = math.inf
        logger.info("requests may hold %.2f GiB of memory (MEMORY_BUDGET_GIB)", self.max_bytes / 2**30)

    def admit_audio(self, inputs: Any, sampling_rate: int, wait_s: float, body_bytes: int = 0) -> contextlib.AbstractAsyncContextManager[None]:
        """``admit`` for a request carrying ``inputs`` (file bytes, base64, sample arrays) in a body of ``body_bytes``."""
        seconds = audio_cost(inputs, sampling_rate, self.max_audio_seconds)
        return self.admit(seconds, wait_s, request_bytes(inputs, seconds, body_bytes))

    @contextlib.asynccontextmanager
    async def admit(self, seconds: float, wait_s: float, nbytes: float = 0.0) -> AsyncIterator[None]:
        """Hold ``seconds`` of the audio budget and ``nbytes`` of the memory budget for the body of the ``async with``."""
        if seconds > self.max_audio_seconds:
            raise AudioTooLong(f"the audio lasts {seconds:.0f} s, more than this server admits at once ({self.max_audio_seconds:.0f} s, MAX_AUDIO_SECONDS_IN_FLIGHT)")
        if nbytes > self.max_bytes:
            raise AudioTooLong(f"this request needs {nbytes / 2**30:.2f} GiB of memory (its body and decoded audio), more than this server can hold beside its models ({self.max_bytes / 2**30:.2f} GiB of MEMORY_BUDGET_GIB)")
        if self.draining:
            raise self._shutting_down_error()
        if self.held_bytes + nbytes > self.max_bytes:
            raise self._busy_error(seconds, memory=nbytes)
        self.held_bytes += nbytes
        try:
            if not self._waiting and self._fits(seconds):
                self._take(seconds)
            else:
                await self._wait_for_turn(seconds, wait_s)
            try:
                yield
            finally:
                self.requests -= 1
                self.audio_seconds -= seconds
                self._admit_waiting()
        finally:
            self.held_bytes -= nbytes

    async def _wait_for_turn(self, seconds: float, wait_s: float) -> None:
        if wait_s <= 0 or len(self._waiting) >= self.max_requests:
            raise self._busy_error(seconds)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (seconds, turn)
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(turn), wait_s)
        except ServiceUnavailable:
            raise  # drained while waiting (``drain`` emptied the line)
        except BaseException as error:  # the wait ran out, or the caller was cancelled (client gone)
            if turn.done() and not turn.cancelled() and turn.exception() is None:  # admitted just as the wait ended: give the place back
                self.requests -= 1
                self.audio_seconds -= seconds
            elif entry in self._waiting:
                self._waiting.remove(entry)
            turn.cancel()
            self._admit_waiting()  # the head may have left: whoever is next may fit now
            if isinstance(error, TimeoutError):
                raise self._busy_error(seconds, waited=wait_s) from None
            raise

    def _fits(self, seconds: float) -> bool:
        # An empty server admits anything within the budget; otherwise both limits hold.
        return self.requests == 0 or (self.requests < self.max_requests and self.audio_seconds + seconds <= self.max_audio_seconds)

    def _take(self, seconds: float) -> None:
        self.requests += 1
        self.audio_seconds += seconds

    def _admit_waiting(self) -> None:
        # First come, first served: a long file at the head is not overtaken by short ones forever.
        while self._waiting and self._fits(self._waiting[0][0]):
            seconds, turn = self._waiting.popleft()
            if not turn.done():
                self._take(seconds)
                turn.set_result(None)

    def drain(self) -> None:
        """Stop admitting; whoever waits is told to go elsewhere."""
        self.draining = True
        while self._waiting:
            _, turn = self._waiting.popleft()
            if not turn.done():
                turn.set_exception(self._shutting_down_error())

    def stop_running(self) -> None:
        """The grace period is over: requests still running are stopped and answered 503."""
        self.shutting_down.set()

    def _busy_error(self, seconds: float, waited: float = 0.0, memory: float = 0.0) -> QueueFull:
        if memory:
            return QueueFull(f"the server is busy: requests hold {self.held_bytes / 2**30:.2f} GiB of its {self.max_bytes / 2**30:.2f} GiB for requests "
                             f"(MEMORY_BUDGET_GIB) and this one needs {memory / 2**30:.2f} GiB more; retry later", self.retry_after)
        after = f" after waiting {waited:g} s" if waited else ""
        return QueueFull(f"the server is busy{after} ({self.requests} requests holding {self.audio_seconds:.0f} s of audio, {len(self._waiting)} waiting; "
                         f"this request needs {seconds:.0f} s of the {self.max_audio_seconds:.0f} s budget); retry later", self.retry_after)

    def _shutting_down_error(self) -> ServiceUnavailable:
        return ServiceUnavailable("the server is shutting down; retry (another replica will take the request)", self.retry_after)
