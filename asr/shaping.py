"""The one place where decoded segments and words become the response's chunks and words.

Engines hand over raw segments (text, start, end and the confidence the decoding decided with);
this module clamps times to the audio, drops empty text, and hides what the request did not ask
for. The handler and the server's renderers call it instead of trimming on their own."""

from __future__ import annotations

from dataclasses import dataclass, field

from config import InferenceConfig, Timestamps
from schemas import Chunk, Transcript, TranscriptionResponse, Word


@dataclass
class RawWord:
    text: str
    start: float
    end: float | None


@dataclass
class RawSegment:
    """A decoded segment in seconds of the original audio; ``end`` None: the window ended without a
    closing timestamp, so the segment ends with the audio."""

    text: str
    start: float
    end: float | None
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None
    temperature: float | None = None
    words: list[RawWord] = field(default_factory=list)


def _span(start: float | None, end: float | None, duration: float) -> tuple[float, float]:
    start = round(min(float(start or 0.0), duration), 3)
    end = round(min(float(end), duration), 3) if end is not None else round(duration, 3)
    return start, max(start, end)


def _stat(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def chunk(segment: RawSegment, duration: float) -> Chunk:
    return Chunk(
        text=segment.text.strip(),
        timestamp=_span(segment.start, segment.end, duration),
        avg_logprob=_stat(segment.avg_logprob),
        compression_ratio=_stat(segment.compression_ratio),
        no_speech_prob=_stat(segment.no_speech_prob),
        temperature=segment.temperature,
    )


def word(raw: RawWord, duration: float) -> Word:
    start, end = _span(raw.start, raw.end, duration)
    return Word(text=raw.text.strip(), start=start, end=end)


def wants_words(config: InferenceConfig, want_words: bool) -> bool:
    """Words are decoded when shown (timestamps=word) or needed (the speaker merge)."""
    return want_words or config.timestamps is Timestamps.word


def transcript(segments: list[RawSegment], *, config: InferenceConfig, want_words: bool, duration: float, language: str | None, strategy: str, text: str | None = None, words: list[RawWord] | None = None) -> Transcript:
    """The engine-neutral transcript of one audio: ``text`` defaults to the segments' text;
    ``words`` to the segments' words."""
    text = ("".join(s.text for s in segments) if text is None else text).strip()
    chunks = [] if config.timestamps is Timestamps.none else [c for c in (chunk(s, duration) for s in segments) if c.text]
    shown_words = None
    if wants_words(config, want_words):
        raw = words if words is not None else [w for s in segments for w in s.words]
        shown_words = [w for w in (word(w, duration) for w in raw) if w.text]
    return Transcript(text=text, chunks=chunks, words=shown_words, language=language, strategy=strategy)


def silent_transcript(config: InferenceConfig, want_words: bool) -> Transcript:
    return Transcript(text="", chunks=[], words=[] if wants_words(config, want_words) else None, language=config.language, strategy="silence")


def hide_unrequested(response: TranscriptionResponse, config: InferenceConfig) -> TranscriptionResponse:
    """Words decoded only for the speaker merge are shown where they were asked for."""
    if config.timestamps is not Timestamps.word:
        response.words = None
        for turn in response.speakers:
            turn.words = None
    return response
