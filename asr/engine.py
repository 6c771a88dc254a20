"""What every ASR engine offers (a ``Protocol``) and what a request to it carries."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from config import InferenceConfig, Task
from errors import InvalidParameters, RequestCancelled
from schemas import Chunk, Transcript

# Peak amplitude below which audio is treated as silence (−80 dBFS): Whisper hallucinates text such
# as "Thank you." on digital silence, and there is nothing to transcribe there.
SILENCE_PEAK = 1e-4


class Request(NamedTuple):
    """One audio of a micro-batch: what ``transcribe`` takes, as a tuple.

    ``on_segments`` (streaming): called from the decoding thread with each run of newly final
    segments of this request, in time order, before its transcript is returned. ``cancelled``: set
    when nobody waits for the result any more (client gone); decoding stops for this request at
    the next window and its result is ``errors.RequestCancelled``."""

    samples: np.ndarray
    config: InferenceConfig
    want_words: bool = False
    on_segments: Callable[[list[Chunk]], None] | None = None
    cancelled: threading.Event | None = None


class Transcriber(Protocol):
    """An ASR engine as the handler sees it; ``asr.registry`` builds one from ``ASR_BACKEND``."""

    multilingual: bool

    def check(self, config: InferenceConfig) -> None:
        """Raise (InvalidParameters, ModelNotConfigured) for what this deployment cannot do."""

    def transcribe(self, samples: np.ndarray, config: InferenceConfig, want_words: bool = False) -> Transcript: ...

    def transcribe_batch(self, requests: list[Request]) -> list[Transcript | Exception]:
        """One result per request, in order; a failure stays in its own request's place."""


def is_silent(samples: np.ndarray) -> bool:
    return len(samples) == 0 or float(np.abs(samples).max()) < SILENCE_PEAK


def check_language_support(config: InferenceConfig, multilingual: bool) -> None:
    """English-only checkpoints (*.en) neither translate nor transcribe other languages."""
    if multilingual:
        return
    if config.task is Task.translate:
        raise InvalidParameters("task=translate needs a multilingual model; this endpoint's model is English-only")
    if config.language not in (None, "en"):
        raise InvalidParameters(f"language={config.language!r} is not supported by this English-only model")


def is_cancelled(request: Request) -> bool:
    return request.cancelled is not None and request.cancelled.is_set()


def cancelled_error() -> RequestCancelled:
    return RequestCancelled("the client went away before the transcript was ready; decoding stopped")


def deliver(request: Request, result: Transcript | Exception) -> Transcript | Exception:
    """A request's final result: ``RequestCancelled`` once its client has gone, and the segments not
    yet streamed handed to its ``on_segments``."""
    if is_cancelled(request):
        return cancelled_error()
    if request.on_segments is not None and isinstance(result, Transcript) and result.chunks:
        request.on_segments(list(result.chunks))
    return result
