"""A stand-in for ``EndpointHandler`` for in-process protocol tests: the real request parsing and
audio decoding (so errors and durations are real), then one made-up segment per 2 s of audio,
reported through ``on_segments`` as a decoding pipeline would, honouring ``cancelled``."""

from __future__ import annotations

import math
import threading
from typing import Any, NamedTuple

from audio import load_audio
from config import InferenceConfig, Timestamps
from errors import ModelNotConfigured, RequestCancelled
from schemas import Chunk, SpeakerTurn, TranscriptionResponse, Word


class Job(NamedTuple):
    """One item of ``transcribe_batch``: ``(inputs, config)`` or ``(inputs, config, on_segments, cancelled)``, as the real handler takes."""

    inputs: Any
    config: InferenceConfig
    on_segments: Any = None
    cancelled: threading.Event | None = None

NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


class FakeHandler:
    def __init__(self, diarization: bool = False, hold: threading.Event | None = None, max_seconds: float = 3600):
        self.diarization = diarization
        self.hold = hold  # when given, each request waits for it (or for its cancellation) after its first segment
        self.max_seconds = max_seconds
        self.configs: list[InferenceConfig] = []
        self.cancelled: list[threading.Event] = []
        self.started = threading.Event()

    def transcribe(self, inputs: Any, config: InferenceConfig, *, on_segments: Any = None, cancelled: threading.Event | None = None) -> TranscriptionResponse:
        result = self.transcribe_batch([Job(inputs, config, on_segments, cancelled)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def transcribe_batch(self, requests: list[Any]) -> list[TranscriptionResponse | Exception]:
        results: list[TranscriptionResponse | Exception] = []
        for job in (Job(*request) for request in requests):
            try:
                results.append(self._one(job))
            except Exception as error:
                results.append(error)
        return results

    def _one(self, job: Job) -> TranscriptionResponse:
        config = job.config
        self.configs.append(config)
        if job.cancelled is not None:
            self.cancelled.append(job.cancelled)
        diarize = self.diarization if config.diarize is None else config.diarize
        if diarize and not self.diarization:
            raise ModelNotConfigured("diarization was requested but this endpoint has no diarization model (set DIARIZATION_MODEL)")
        audio = load_audio(job.inputs, config.sampling_rate, self.max_seconds)
        count = max(1, math.ceil(audio.duration / 2))
        chunks = [Chunk(text=f"Segment {NUMBERS[i % 10]}.", timestamp=(2.0 * i, min(audio.duration, 2.0 * i + 2)),
                        speaker=f"SPEAKER_0{i % 2}" if diarize else None) for i in range(count)]
        self.started.set()
        for index, chunk in enumerate(chunks):
            if job.cancelled is not None and job.cancelled.is_set():
                raise RequestCancelled("cancelled")
            if job.on_segments:
                job.on_segments([chunk.model_copy(update={"speaker": None})])
            if index == 0 and self.hold is not None:
                while not self.hold.wait(0.01):
                    if job.cancelled is not None and job.cancelled.is_set():
                        raise RequestCancelled("cancelled")
        text = " ".join(c.text for c in chunks)
        words = [Word(text=w, start=c.timestamp[0], end=c.timestamp[1], speaker=c.speaker) for c in chunks for w in c.text.split()]
        speakers = [SpeakerTurn(speaker=c.speaker, text=c.text, timestamp=c.timestamp) for c in chunks] if diarize else []
        return TranscriptionResponse(text=text, chunks=[] if config.timestamps is Timestamps.none else chunks, speakers=speakers, language=config.language or "en",
                                     duration=round(audio.duration, 3), words=words if config.timestamps is Timestamps.word else None, strategy="fake",
                                     num_speakers=len({s.speaker for s in speakers}))
