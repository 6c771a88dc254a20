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

from asr import Request, build_transcriber
from audio import load_audio
from config import InferenceConfig, ModelSettings, Timestamps, check_speaker_name
from diarization_utils import Diarizer, mark_overlaps, merge_speakers
from errors import AudioDecodeError, InvalidParameters, ModelNotConfigured
from schemas import TranscriptionResponse
from speaker_id import SpeakerEmbedder, Voiceprint, match_speakers, rename_speakers
from voiceprints import EnrolledSpeaker, VoiceprintStore

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
        self.embedder = SpeakerEmbedder.from_pipeline(self.diarizer.pipeline) if self.diarizer else None
        self.voiceprints = VoiceprintStore(self.base_dir / self.settings.voiceprints_db)
        # Diarization and ASR are independent until the merge: run them side by side.
        self._diarization_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diarization") if self.diarizer else None

    def __call__(self, data: Any) -> dict[str, Any]:
        """The HF runtime's entry point: a request body in, a JSON-serializable dict out."""
        inputs, config = parse_request(data)
        return self.transcribe(inputs, config).model_dump(mode="json")

    def transcribe(self, inputs: Any, config: InferenceConfig) -> TranscriptionResponse:
        result = self.transcribe_batch([(inputs, config)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def transcribe_batch(self, requests: list[tuple[Any, InferenceConfig]]) -> list[TranscriptionResponse | Exception]:
        """Several requests at once (the server's micro-batching): the transcriber decodes their
        audio together; each failure is returned in its request's place, the others go on."""
        results: list[TranscriptionResponse | Exception | None] = [None] * len(requests)
        started = time.perf_counter()
        prepared = []  # (index, audio, config, diarize, turns future, timings)
        for index, (inputs, config) in enumerate(requests):
            item_started = time.perf_counter()
            try:
                self.transcriber.check(config)
                # References are checked before any model runs: a bad one fails the request at once.
                known = self.known_voiceprints(config)
                diarize = self._wants_diarization(config)
                audio = load_audio(inputs, config.sampling_rate, self.settings.max_audio_seconds)
            except Exception as error:
                results[index] = error
                continue
            timings = {"decode_audio": time.perf_counter() - item_started}
            turns_future = self._diarization_thread.submit(self._timed, self._diarize, audio.samples, config, known) if diarize else None
            prepared.append((index, audio, config, diarize, turns_future, timings))
        asr_started = time.perf_counter()
        transcripts = self.transcriber.transcribe_batch([Request(audio.samples, config, diarize) for _, audio, config, diarize, _, _ in prepared]) if prepared else []
        asr_seconds = time.perf_counter() - asr_started
        for (index, audio, config, _, turns_future, timings), transcript in zip(prepared, transcripts):
            try:
                if isinstance(transcript, Exception):
                    raise transcript
                timings["asr"] = asr_seconds
                results[index] = self._respond(audio, config, transcript, turns_future, timings, started)
            except Exception as error:
                results[index] = error
        return results  # type: ignore[return-value]

    def _respond(self, audio, config: InferenceConfig, transcript, turns_future, timings: dict[str, float], started: float) -> TranscriptionResponse:
        speakers, chunks, words, warnings, matches = [], transcript.chunks, transcript.words, [], None
        if turns_future is not None:
            (turns, matches), timings["diarization"] = turns_future.result()
            speakers, chunks, words = merge_speakers(transcript, turns)
            mark_overlaps(speakers, turns)
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
            speaker_matches=matches,
        )

    def known_voiceprints(self, config: InferenceConfig) -> list[Voiceprint]:
        """The request's known speakers as voiceprints: references embedded now, or enrolled ones
        read from the store (refused if another embedding model made them)."""
        if not config.known_speakers:
            return []
        if self.embedder is None:
            raise ModelNotConfigured("known_speakers need a diarization model, and this endpoint has none (set DIARIZATION_MODEL)")
        if isinstance(config.known_speakers, dict):
            return [self.embedder.reference(name, audio) for name, audio in config.known_speakers.items()]
        return self.voiceprints.get(config.known_speakers, self.embedder.model_id)

    # --- enrolled speakers (the server's /v1/speakers routes call these) ---

    def enroll_speaker(self, name: str, audio: Any) -> EnrolledSpeaker:
        """Embed ``audio`` (2-10 s of ``name`` speaking) and store it under ``name``, replacing any
        earlier voiceprint of that name."""
        if self.embedder is None:
            raise ModelNotConfigured("enrolling speakers needs a diarization model, and this endpoint has none (set DIARIZATION_MODEL)")
        try:
            check_speaker_name(name)
        except ValueError as error:
            raise InvalidParameters(str(error)) from None
        return self.voiceprints.enroll(self.embedder.reference(name, audio))

    def list_speakers(self) -> list[EnrolledSpeaker]:
        return self.voiceprints.list()

    def delete_speaker(self, name: str) -> None:
        self.voiceprints.delete(name)

    def _diarize(self, samples, config: InferenceConfig, known: list[Voiceprint]):
        """Speaker turns, named after the known speakers the clusters match (with the matches)."""
        if not known:
            return self.diarizer.diarize(samples, **config.speaker_constraints), None
        turns, centroids = self.diarizer.diarize_with_embeddings(samples, **config.speaker_constraints)
        matches = match_speakers(centroids, known, self.settings.speaker_match_threshold)
        return rename_speakers(turns, matches), matches

    def _wants_diarization(self, config: InferenceConfig) -> bool:
        if config.diarize is None:
            # Speaker counts and names imply diarization; otherwise diarize whenever a pipeline is loaded (as the blog's handler).
            wanted = self.diarizer is not None or bool(config.speaker_constraints) or bool(config.known_speakers)
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
