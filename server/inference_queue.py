"""The inference queue: the one place requests wait for the (not thread-safe) handler, and the
micro-batcher that lets requests waiting together share one ``handler.transcribe_batch`` call."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from errors import RequestCancelled
from server.metrics import Metrics

SegmentsCallback = Callable[[list[Any]], None]


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class InferenceQueue:
    """Runs handler calls on ``workers`` threads, off the event loop, so /health and /metrics never
    wait on a model (what may reach it is ``server.admission``'s decision). ``run_batched`` micro-batches: the worker that picks up a
    transcription takes every transcription waiting with it (up to ``max_batch``) into one
    ``handler.transcribe_batch`` call, whose decoder then runs them in the same ``generate`` calls.

    Each request carries a ``cancelled`` event, set when its caller stops waiting (the client went
    away): a request not started yet is skipped, a running one is stopped by the decoding pipeline
    at its next window."""

    def __init__(self, workers: int, max_batch: int = 1, metrics: Metrics | None = None):
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._lock = threading.Lock()  # guards waiting, _pending and each job's started/abandoned state
        self.waiting = 0
        self.running = 0  # calls a worker is running now
        self._max_batch = max_batch
        self._pending: list[_BatchItem] = []  # transcriptions no worker has taken yet, oldest first
        self._metrics = metrics or Metrics()
        self._metrics.watch_queue(lambda: self.waiting)

    @property
    def idle(self) -> bool:
        """Nothing waits for a worker and none is busy: optional work (live partial text) may run."""
        return self.waiting == 0 and self.running == 0

    async def run_batched(self, handler: Any, inputs: Any, config: Any, *, on_segments: SegmentsCallback | None = None, cancelled: threading.Event | None = None) -> Any:
        """``handler.transcribe(inputs, config)``, possibly together with other waiting requests.
        ``on_segments`` receives each run of newly final segments from the decoding thread."""
        cancelled = cancelled or threading.Event()
        finished = False
        try:
            if self._max_batch <= 1 or not hasattr(handler, "transcribe_batch"):
                result = await self.run(_transcribe_one, handler, _BatchItem(inputs, config, on_segments, cancelled))
            else:
                item = _BatchItem(inputs, config, on_segments, cancelled)
                with self._lock:
                    self._pending.append(item)
                try:
                    result = await self.run(self._take_batch, handler, item)
                finally:
                    with self._lock:
                        if item in self._pending:  # cancelled before any worker took it
                            self._pending.remove(item)
            finished = True
            return result
        finally:
            if not finished:  # the caller is gone (or failed): stop the work done for it
                cancelled.set()

    def _take_batch(self, handler: Any, item: "_BatchItem") -> Any:
        with self._lock:
            batch = [item, *[other for other in self._pending if other is not item][: self._max_batch - 1]] if item in self._pending else []
            for taken in batch:
                self._pending.remove(taken)
        live = [taken for taken in batch if not taken.cancelled.is_set()]
        for taken in batch:
            if taken not in live:
                taken.finish(RequestCancelled("the client went away before its request was started"))
        if live:
            try:
                results = handler.transcribe_batch([taken.request() for taken in live])
            except Exception as error:
                results = [error] * len(live)
            for taken, result in zip(live, results):
                taken.finish(result)
        item.done.wait()  # taken by another worker's batch: its result comes from there
        if isinstance(item.result, Exception):
            raise item.result
        return item.result

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on a worker. Cancelled once the worker has started it, this returns
        (cancelled) only when the worker is done: whoever holds memory or admission for the call
        keeps holding it while the worker still uses it."""
        job = {"started": False, "abandoned": False}
        with self._lock:
            self.waiting += 1
        work = asyncio.get_running_loop().run_in_executor(self._executor, self._work, job, function, *args)
        # Read however the call ends: an abandoned call's error has nobody left to read it.
        work.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            with self._lock:  # one decision with the worker's: it starts the call, or it skips it
                started = job["started"]
                if not started:
                    job["abandoned"] = True
                    self.waiting -= 1
            if started:
                await asyncio.wait({work})  # the work stops at its next cancellation check
            raise

    def _work(self, job: dict[str, bool], function: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            if job["abandoned"]:
                return None
            job["started"] = True
            self.waiting -= 1
            self.running += 1
        self._metrics.in_flight.inc()
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            self._metrics.inference_time.observe(time.perf_counter() - started)
            self._metrics.in_flight.dec()
            with self._lock:
                self.running -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _BatchItem:
    """One request on its way to the handler, and where its result lands."""

    def __init__(self, inputs: Any, config: Any, on_segments: SegmentsCallback | None, cancelled: threading.Event):
        self.inputs, self.config, self.on_segments, self.cancelled = inputs, config, on_segments, cancelled
        self.result: Any = None
        self.done = threading.Event()

    def request(self) -> tuple[Any, ...]:
        """The handler's batch entry: ``(inputs, config, on_segments, cancelled)``."""
        return (self.inputs, self.config, self.on_segments, self.cancelled)

    def finish(self, result: Any) -> None:
        self.result = result
        self.done.set()


def _transcribe_one(handler: Any, item: _BatchItem) -> Any:
    if item.cancelled.is_set():
        raise RequestCancelled("the client went away before its request was started")
    # Streaming hooks only when used: a handler without them still serves plain requests.
    hooks = {"on_segments": item.on_segments} if item.on_segments else {}
    return handler.transcribe(item.inputs, item.config, cancelled=item.cancelled, **hooks)
