"""Hugging Face Inference Endpoints custom handler: Whisper ASR + speculative decoding + diarization.

The serving runtime imports this file from the repository directory, builds ``EndpointHandler(path)``
once, and calls it with each request body: ``{"inputs": <base64 str | bytes>, "parameters": {...}}``.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from asr import build_transcriber
from audio import load_audio
from config import InferenceConfig, ModelSettings
from diarization_utils import Diarizer, merge_speakers
from errors import AudioDecodeError, ModelNotConfigured
from schemas import TranscriptionResponse

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

    def transcribe(self, inputs: Any, config: InferenceConfig) -> TranscriptionResponse:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        self.transcriber.check(config)
        diarize = self._wants_diarization(config)
        audio = load_audio(inputs, config.sampling_rate, self.settings.max_audio_seconds)
        timings["decode_audio"] = time.perf_counter() - started

        turns_future = self._diarization_thread.submit(self._timed, self.diarizer.diarize, audio.samples, **config.speaker_constraints) if diarize else None
        asr_started = time.perf_counter()
        transcript = self.transcriber.transcribe(audio.samples, config, want_words=diarize)
        timings["asr"] = time.perf_counter() - asr_started
        speakers, chunks, words = [], transcript.chunks, transcript.words
        if turns_future is not None:
            turns, timings["diarization"] = turns_future.result()
            speakers, chunks, words = merge_speakers(transcript, turns)
        if config.timestamps.value != "word":
            words = None
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
