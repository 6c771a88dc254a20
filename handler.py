"""Hugging Face Inference Endpoints custom handler: Whisper ASR + speculative decoding + diarization.

The serving runtime imports this file from the repository directory, builds ``EndpointHandler(path)``
once, and calls it with each request body: ``{"inputs": <base64 str | bytes>, "parameters": {...}}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from asr import Request, build_transcriber
from audio import load_audio
from config import InferenceConfig, ModelSettings, Timestamps
from diarization_utils import Diarizer, merge_speakers
from errors import AudioDecodeError, ModelNotConfigured
from schemas import Chunk, TranscriptionResponse

logger = logging.getLogger(__name__)


class EndpointHandler:
    def __init__(self, path: str = "", settings: ModelSettings | None = None):
        self.base_dir = Path(path) if path else Path(__file__).resolve().parent
        # The runtime's working directory is not the repo: look for .env in both.
        self.settings = settings or ModelSettings(_env_file=(".env", str(self.base_dir / ".env")))
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.transcriber = build_transcriber(self.settings, self.base_dir)
        self.diarizer = Diarizer.load(self.settings, self.base_dir) if self.settings.diarization_model else None
        # Diarization and ASR are independent until the merge: run them side by side.
        self._diarization_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diarization") if self.diarizer else None

    def __call__(self, data: Any) -> dict[str, Any]:
        """The HF runtime's entry point: a request body in, a JSON-serializable dict out."""
        inputs, config = parse_request(data)
        return self.transcribe(inputs, config).model_dump(mode="json")

    def transcribe(self, inputs: Any, config: InferenceConfig, *, on_segments: Callable[[list[Chunk]], None] | None = None, cancelled: threading.Event | None = None) -> TranscriptionResponse:
        """One request; ``on_segments`` and ``cancelled`` as in ``asr.Request`` (streaming, client gone)."""
        result = self.transcribe_batch([(inputs, config, on_segments, cancelled)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def transcribe_batch(self, requests: list[tuple[Any, InferenceConfig] | tuple[Any, InferenceConfig, Callable[[list[Chunk]], None] | None, threading.Event | None]]) -> list[TranscriptionResponse | Exception]:
        """Several requests at once (the server's micro-batching): the transcriber decodes their
        audio together; each failure is returned in its request's place, the others go on. Each
        item is ``(inputs, config)`` or ``(inputs, config, on_segments, cancelled)``."""
        results: list[TranscriptionResponse | Exception | None] = [None] * len(requests)
        started = time.perf_counter()
        prepared = []  # (index, audio, config, diarize, turns future, timings, on_segments, cancelled)
        for index, (inputs, config, *streaming) in enumerate(requests):
            on_segments, cancelled = (list(streaming) + [None, None])[:2]
            item_started = time.perf_counter()
            try:
                self.transcriber.check(config)
                diarize = self._wants_diarization(config)
                audio = load_audio(inputs, config.sampling_rate, self.settings.max_audio_seconds)
            except Exception as error:
                results[index] = error
                continue
            timings = {"decode_audio": time.perf_counter() - item_started}
            turns_future = self._diarization_thread.submit(self._timed, self.diarizer.diarize, audio.samples, **config.speaker_constraints) if diarize else None
            prepared.append((index, audio, config, diarize, turns_future, timings, on_segments, cancelled))
        asr_started = time.perf_counter()
        transcripts = self.transcriber.transcribe_batch([Request(audio.samples, config, diarize, on_segments, cancelled) for _, audio, config, diarize, _, _, on_segments, cancelled in prepared]) if prepared else []
        asr_seconds = time.perf_counter() - asr_started
        for (index, audio, config, _, turns_future, timings, _, _), transcript in zip(prepared, transcripts):
            try:
                if isinstance(transcript, Exception):
                    raise transcript
                timings["asr"] = asr_seconds
                results[index] = self._respond(audio, config, transcript, turns_future, timings, started)
            except Exception as error:
                results[index] = error
        return results  # type: ignore[return-value]

    def _respond(self, audio, config: InferenceConfig, transcript, turns_future, timings: dict[str, float], started: float) -> TranscriptionResponse:
        speakers, chunks, words, warnings = [], transcript.chunks, transcript.words, []
        if turns_future is not None:
            turns, timings["diarization"] = turns_future.result()
            speakers, chunks, words = merge_speakers(transcript, turns)
            warnings += unmet_speaker_constraints(config, len({t.speaker for t in turns}))
        if config.timestamps is not Timestamps.word:
            # Words were decoded for the speaker merge only: show them where they were asked for.
            words = None
            for turn in speakers:
                turn.words = None
        timings["total"] = time.perf_counter() - started
        return TranscriptionResponse(
            text=transcript.text,
            chunks=chunks,
            speakers=speakers,
            language=transcript.language,
            duration=round(audio.duration, 3),
            words=words,
            strategy=transcript.strategy,
            num_speakers=len({s.speaker for s in speakers}),
            timings={k: round(v, 3) for k, v in timings.items()},
            warnings=warnings,
        )

    def _wants_diarization(self, config: InferenceConfig) -> bool:
        if config.diarize is None:
            # Speaker counts imply diarization; otherwise diarize whenever a pipeline is loaded (as the blog's handler).
            wanted = self.diarizer is not None or bool(config.speaker_constraints)
        else:
            wanted = config.diarize
        if wanted and self.diarizer is None:
            raise ModelNotConfigured("diarization was requested but this endpoint has no diarization model (set DIARIZATION_MODEL)")
        return wanted

    @staticmethod
    def _timed(function, *args, **kwargs):
        started = time.perf_counter()
        return function(*args, **kwargs), time.perf_counter() - started


def unmet_speaker_constraints(config: InferenceConfig, found: int) -> list[str]:
    """pyannote only logs when it cannot meet a speaker count (too little speech): say it to the user."""
    wanted = config.speaker_constraints
    if "num_speakers" in wanted and found != wanted["num_speakers"]:
        return [f"num_speakers={wanted['num_speakers']} was asked for but diarization found {found} speaker(s) in this audio"]
    if found < wanted.get("min_speakers", 0):
        return [f"min_speakers={wanted['min_speakers']} was asked for but diarization found only {found} speaker(s) in this audio"]
    if found > wanted.get("max_speakers", found):
        return [f"max_speakers={wanted['max_speakers']} was asked for but diarization found {found} speaker(s)"]
    return []


def parse_request(data: Any) -> tuple[Any, InferenceConfig]:
    """Accept what the HF runtime hands over: a dict with ``inputs`` (base64 str, bytes, or
    samples) and optional ``parameters``, or raw bytes."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), InferenceConfig()
    if not isinstance(data, dict):
        raise AudioDecodeError(f"the request body must be a JSON object with 'inputs', got {type(data).__name__}")
    unknown = set(data) - {"inputs", "parameters"}
    if unknown:
        raise AudioDecodeError(f"unknown top-level field(s) {sorted(unknown)}; the body is {{'inputs': <base64 audio>, 'parameters': {{...}}}}")
    if "inputs" not in data or data["inputs"] is None:
        raise AudioDecodeError("the request has no 'inputs': send {'inputs': <base64 audio>, 'parameters': {...}}")
    return data["inputs"], InferenceConfig.parse(data.get("parameters"))
