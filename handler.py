"""Hugging Face Inference Endpoints custom handler: Whisper ASR + speculative decoding + diarization.

The serving runtime imports this file from the repository directory, builds ``EndpointHandler(path)``
once, and calls it with each request body: ``{"inputs": <base64 str | bytes>, "parameters": {...}}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asr import Request, build_transcriber
from audio import TARGET_SAMPLING_RATE, Audio, as_float32, load_audio
from config import InferenceConfig, ModelSettings, Timestamps, check_speaker_name
from diarization.blocks import diarize_speech, embedding_inference
from diarization.speaker_identification import SpeakerEmbedder, match_speakers, rename_speakers
from diarization.speech_detection import SpeechRegion, detect_speech
from diarization.voiceprints import EnrolledSpeaker, Voiceprint, VoiceprintStore
from diarization_utils import Diarizer, mark_overlaps, merge_speakers
from errors import AudioDecodeError, InvalidParameters, ModelNotConfigured
from memory import release_freed_memory
from schemas import Chunk, SpeakerMatch, SpeakerSegment, Transcript, TranscriptionResponse

# Audio at least this long is checked for speech before any model runs (the VAD costs well under 1%
# of ASR's time): a file with no speech at all is answered without decoding or diarizing it.
SPEECH_CHECK_MIN_S = 30.0
# Longer audio is transcribed in sections cut in pauses, one after another: the ASR backend's own
# copies (VAD padding, speech chunks, features) then scale with a section, not with the file. Such
# audio is also diarized after its transcription instead of beside it, so that the two stages'
# working memory does not add up.
SECTION_S = 600.0
# On CPU a section decodes at most this many windows at once: each window's decoder state costs tens
# of MB of host memory, and beyond a few windows a bigger batch gains little speed on CPU.
CPU_SECTION_BATCH_SIZE = 8

logger = logging.getLogger(__name__)

OnSegments = Callable[[list[Chunk]], None]


@dataclass
class _Prepared:
    """A request whose audio is decoded and whose diarization (if any) runs or waits for its ASR."""

    index: int
    audio: Audio
    config: InferenceConfig
    diarize: bool
    turns_future: Future | None
    timings: dict[str, float]
    regions: list[SpeechRegion] | None
    on_segments: OnSegments | None = None
    cancelled: threading.Event | None = None
    known: list[Voiceprint] = field(default_factory=list)
    transcript: Transcript | Exception | None = field(default=None)


class EndpointHandler:
    def __init__(self, path: str = "", settings: ModelSettings | None = None):
        self.base_dir = Path(path) if path else Path(__file__).resolve().parent
        # The runtime's working directory is not the repo: look for .env in both.
        self.settings = settings or ModelSettings(_env_file=(".env", str(self.base_dir / ".env")))
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.transcriber = build_transcriber(self.settings, self.base_dir)
        self.diarizer = Diarizer.load(self.settings, self.base_dir) if self.settings.diarization_model else None
        self.embedder = SpeakerEmbedder(embedding_inference(self.diarizer)) if self.diarizer else None
        self.voiceprints = VoiceprintStore(self.base_dir / self.settings.voiceprints_db)
        # Diarization and ASR are independent until the merge: run them side by side.
        self._diarization_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diarization") if self.diarizer else None

    def __call__(self, data: Any) -> dict[str, Any]:
        """The HF runtime's entry point: a request body in, a JSON-serializable dict out."""
        inputs, config = parse_request(data)
        return self.transcribe(inputs, config).model_dump(mode="json")

    def transcribe(self, inputs: Any, config: InferenceConfig, *, on_segments: OnSegments | None = None, cancelled: threading.Event | None = None) -> TranscriptionResponse:
        """One request; ``on_segments`` and ``cancelled`` as in ``asr.Request`` (streaming, client gone)."""
        result = self.transcribe_batch([(inputs, config, on_segments, cancelled)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def transcribe_batch(self, requests: list[tuple[Any, InferenceConfig] | tuple[Any, InferenceConfig, OnSegments | None, threading.Event | None]]) -> list[TranscriptionResponse | Exception]:
        """Several requests at once (the server's micro-batching): the transcriber decodes their
        audio together; each failure is returned in its request's place, the others go on. Each
        item is ``(inputs, config)`` or ``(inputs, config, on_segments, cancelled)``."""
        results: list[TranscriptionResponse | Exception | None] = [None] * len(requests)
        started = time.perf_counter()
        prepared: list[_Prepared] = []
        for index, (inputs, config, *streaming) in enumerate(requests):
            on_segments, cancelled = (list(streaming) + [None, None])[:2]
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
            regions = None
            long = audio.duration > SECTION_S
            if diarize or audio.duration >= SPEECH_CHECK_MIN_S:
                vad_started = time.perf_counter()
                regions = detect_speech(audio.samples)
                if long:
                    release_freed_memory()
                timings["vad"] = time.perf_counter() - vad_started
            turns_future = self._diarize(audio, regions, config, known) if diarize and not (long and regions) else None
            if regions == []:  # no speech: nothing to decode
                results[index] = self._respond(audio, config, no_speech(config, diarize), turns_future, timings, started)
                continue
            prepared.append(_Prepared(index, audio, config, diarize, turns_future, timings, regions, on_segments, cancelled, known))
        short = [item for item in prepared if item.audio.duration <= SECTION_S]
        asr_started = time.perf_counter()
        transcripts = self.transcriber.transcribe_batch([Request(as_float32(p.audio.samples), p.config, p.diarize, p.on_segments, p.cancelled) for p in short]) if short else []
        for item, transcript in zip(short, transcripts):
            item.transcript, item.timings["asr"] = transcript, time.perf_counter() - asr_started
        for item in prepared:
            if item.transcript is None:
                asr_started = time.perf_counter()
                item.transcript = self._transcribe_sections(item)
                item.timings["asr"] = time.perf_counter() - asr_started
                if item.diarize and item.turns_future is None and not isinstance(item.transcript, Exception):
                    item.turns_future = self._diarize(item.audio, item.regions, item.config, item.known)
        for item in prepared:
            try:
                if isinstance(item.transcript, Exception):
                    raise item.transcript
                results[item.index] = self._respond(item.audio, item.config, item.transcript, item.turns_future, item.timings, started)
            except Exception as error:
                results[item.index] = error
        return results  # type: ignore[return-value]

    def _transcribe_sections(self, item: "_Prepared") -> Transcript | Exception:
        """One long audio, section by section (a float32 copy of one section at a time); the language
        detected in the first section holds for the rest, as for an unsectioned file."""
        parts: list[Transcript] = []
        config = item.config
        if not self.settings.resolved_device().startswith("cuda"):
            config = config.model_copy(update={"batch_size": min(config.batch_size, CPU_SECTION_BATCH_SIZE)})
        for start, end in sections(item.regions or [], item.audio.duration, SECTION_S):
            samples = as_float32(item.audio.samples[round(start * TARGET_SAMPLING_RATE) : round(end * TARGET_SAMPLING_RATE)])
            on_segments = (lambda chunks, offset=start: item.on_segments([shift_chunk(c, offset) for c in chunks])) if item.on_segments else None
            part = self.transcriber.transcribe_batch([Request(samples, config, item.diarize, on_segments, item.cancelled)])[0]
            del samples
            release_freed_memory()
            if isinstance(part, Exception):
                return part
            if part.language and config.language is None:
                config = config.model_copy(update={"language": part.language})
            parts.append(shift(part, start))
        return join_transcripts(parts, config)

    def _diarize(self, audio: Audio, regions: list[SpeechRegion] | None, config: InferenceConfig, known: list[Voiceprint]) -> Future:
        """A future of ((turns, matches), seconds): matches are None without known speakers."""
        if not regions:
            done: Future = Future()
            done.set_result((([], match_speakers({}, known, self.settings.speaker_match_threshold) if known else None), 0.0))
            return done
        return self._diarization_thread.submit(self._timed, self._diarize_and_name, audio.samples, regions, config, known)

    def _diarize_and_name(self, samples, regions: list[SpeechRegion], config: InferenceConfig, known: list[Voiceprint]) -> tuple[list[SpeakerSegment], list[SpeakerMatch] | None]:
        """Speaker turns; with known speakers, the final speakers (after block linking) are matched
        to them by the centroid embeddings of their own speech and renamed."""
        turns = diarize_speech(self.diarizer, samples, regions, **config.speaker_constraints)
        if not known:
            return turns, None
        matches = match_speakers(self.embedder.speaker_centroids(samples, turns), known, self.settings.speaker_match_threshold)
        return rename_speakers(turns, matches), matches

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

    def check(self, config: InferenceConfig) -> None:
        """Raise what this deployment cannot do for ``config`` (ModelNotConfigured,
        InvalidParameters), before any audio is read: the server asks before admitting a request."""
        self.transcriber.check(config)
        self._wants_diarization(config)

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


def sections(regions: list[SpeechRegion], duration: float, length: float) -> list[tuple[float, float]]:
    """(start, end) spans of at most ``length`` s covering the audio, cut in the middle of a pause
    between speech regions where there is one (else at ``length``)."""
    spans: list[tuple[float, float]] = []
    start = 0.0
    while duration - start > length:
        limit = start + length
        # The last pause that ends before the limit: cut in its middle.
        gaps = [(a.end + b.start) / 2 for a, b in zip(regions, regions[1:]) if start < a.end and b.start <= limit]
        cut = max((g for g in gaps if g > start), default=limit)
        spans.append((start, cut))
        start = cut
    spans.append((start, duration))
    return spans


def shift_chunk(chunk: Chunk, offset: float) -> Chunk:
    return chunk.model_copy(update={"timestamp": (round(chunk.timestamp[0] + offset, 3), round(chunk.timestamp[1] + offset, 3))})


def shift(transcript: Transcript, offset: float) -> Transcript:
    chunks = [shift_chunk(c, offset) for c in transcript.chunks]
    words = [w.model_copy(update={"start": round(w.start + offset, 3), "end": round(w.end + offset, 3)}) for w in transcript.words] if transcript.words is not None else None
    return transcript.model_copy(update={"chunks": chunks, "words": words})


def join_transcripts(parts: list[Transcript], config: InferenceConfig) -> Transcript:
    spoken = [p for p in parts if p.strategy != "silence"] or parts
    words = None if all(p.words is None for p in parts) else [w for p in parts for w in p.words or []]
    return Transcript(
        text=" ".join(p.text for p in parts if p.text),
        chunks=[c for p in parts for c in p.chunks],
        words=words,
        language=config.language or spoken[0].language,
        strategy=spoken[0].strategy,
    )


def no_speech(config: InferenceConfig, diarize: bool) -> Transcript:
    words = [] if diarize or config.timestamps is Timestamps.word else None
    return Transcript(text="", chunks=[], words=words, language=config.language, strategy="no-speech")


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
