"""The shapes a transcription takes on its way out: words, chunks, speaker turns, the response."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Word(BaseModel):
    text: str
    start: float
    end: float
    speaker: str | None = None


class Chunk(BaseModel):
    """A segment of the transcript, as the blog handler returns it, with what the decoding decided
    it with (openai-whisper's segment statistics; None where a decoding did not compute them)."""

    text: str
    timestamp: tuple[float, float]
    speaker: str | None = None
    avg_logprob: float | None = Field(None, description="Mean log-probability of the segment's tokens.")
    compression_ratio: float | None = Field(None, description="gzip compression ratio of the window's text (> 2.4: repetitive).")
    no_speech_prob: float | None = Field(None, description="Probability of no speech in the segment's window.")
    temperature: float | None = Field(None, description="Temperature of the decoding that was kept (fallback raises it).")


class SpeakerSegment(BaseModel):
    """One turn of diarization output: who spoke from ``start`` to ``end`` (seconds)."""

    speaker: str
    start: float
    end: float


class SpeakerTurn(BaseModel):
    speaker: str
    text: str
    timestamp: tuple[float, float]
    words: list[Word] | None = None
    overlap: bool = Field(False, description="Another speaker talks during part of this turn (overlapped speech); its words keep the speaker who holds most of their time.")


class SpeakerMatch(BaseModel):
    """How one known speaker was matched to the diarized speakers."""

    name: str
    cluster: str | None = Field(description="The diarized speaker (SPEAKER_xx) given this name; None when no cluster was similar enough.")
    similarity: float | None = Field(description="Cosine similarity of the reference to that cluster (unmatched: to its most similar cluster; None when nobody was diarized).")


class Transcript(BaseModel):
    """What the ASR engine produces for one audio."""

    text: str
    chunks: list[Chunk] = Field(default_factory=list)
    words: list[Word] | None = None
    language: str | None = None
    strategy: str = Field(description="How decoding ran, e.g. 'batched' or 'assisted-sequential'.")


class TranscriptionResponse(BaseModel):
    """The handler's answer (JSON-serializable via ``model_dump``)."""

    text: str
    chunks: list[Chunk]
    speakers: list[SpeakerTurn]
    language: str | None
    duration: float = Field(description="Seconds of audio transcribed.")
    words: list[Word] | None = Field(None, description="Present with timestamps='word' (and speaker labels when diarized).")
    strategy: str = Field(description="Decoding strategy that ran.")
    num_speakers: int = 0
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds spent per stage.")
    warnings: list[str] = Field(default_factory=list, description="What could not be done as asked (e.g. an unmet speaker count).")
    speaker_matches: list[SpeakerMatch] | None = Field(None, description="With known_speakers: which diarized speaker each name went to, and how similar.")
