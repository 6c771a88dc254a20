"""Speech regions of 16 kHz audio.

``detect_speech``: Silero VAD, as faster-whisper's batched pipeline runs it. The decoding pipeline
cuts its windows from these regions, and audio where it finds no speech costs almost nothing.

``diarization_speech``: what diarization runs over: Silero's regions joined with the speech that the
diarization pipeline's own segmentation model (pyannote segmentation-3.0, trained on meetings among
others) hears. Silero misses quiet, far-field meeting speech that the segmentation model keeps; the
diarization pipeline then works on speech only (non-speech cut out), which keeps its clustering clean.

Two things keep long audio cheap: stretches whose peak stays under ``GATE_PEAK`` (digital silence,
gaps in a recording) never reach either model, and the models run block by block, because
faster-whisper's wrapper copies its whole input about twice (padding, context windows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

import numpy as np

from audio import as_float32

if TYPE_CHECKING:
    from diarization_utils import Diarizer

SAMPLING_RATE = 16000
GATE_PEAK = 1e-3  # -60 dBFS: quieter than any recording's noise floor, so only true silence is skipped
GATE_FRAME = SAMPLING_RATE // 2
BLOCK = 300 * SAMPLING_RATE  # samples per VAD call
MIN_SILENCE_MS = 160  # a shorter pause does not end a speech region (Silero's rule, faster-whisper's batched default)


class SpeechRegion(NamedTuple):
    start: float  # seconds
    end: float


def detect_speech(samples: np.ndarray, *, max_speech_s: float = float("inf"), min_silence_ms: int = MIN_SILENCE_MS, threshold: float = 0.5, pad_ms: int = 400) -> list[SpeechRegion]:
    """Regions of speech in 16 kHz mono ``samples`` (float32 or int16, as ``audio.Audio`` holds them), each at most ``max_speech_s`` long."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if len(samples) == 0:
        return []
    options = VadOptions(threshold=threshold, max_speech_duration_s=max_speech_s, min_silence_duration_ms=min_silence_ms, speech_pad_ms=pad_ms)
    regions: list[SpeechRegion] = []
    for start, end in _blocks(samples):
        for index, found in enumerate(get_speech_timestamps(as_float32(samples[start:end]), options)):
            region = SpeechRegion((start + found["start"]) / SAMPLING_RATE, (start + found["end"]) / SAMPLING_RATE)
            previous = regions[-1] if regions and index == 0 else None
            # A region cut by a block boundary is one region again, within the length limit.
            if previous and region.start - previous.end < min_silence_ms / 1000 and region.end - previous.start <= max_speech_s:
                regions[-1] = SpeechRegion(previous.start, region.end)
            else:
                regions.append(region)
    return regions


def diarization_speech(diarizer: "Diarizer", samples: np.ndarray, regions: Sequence[SpeechRegion]) -> list[SpeechRegion]:
    """The union of ``regions`` (``detect_speech``'s) and the speech the diarization pipeline's
    segmentation model hears in the audible blocks of ``samples``, sorted and disjoint. A gap shorter
    than ``MIN_SILENCE_MS`` is speech, as it is inside one detector's regions: where one detector's
    region ends just before the other's begins, the pause between them is not cut out of the audio
    diarization hears (a splice inside a word)."""
    spans = sorted([(r.start, r.end) for r in regions] + [(start / SAMPLING_RATE + s, start / SAMPLING_RATE + e) for start, end in _blocks(samples) for s, e in diarizer.speech_activity(as_float32(samples[start:end]))])
    joined: list[SpeechRegion] = []
    for span_start, span_end in spans:
        if joined and span_start - joined[-1].end < MIN_SILENCE_MS / 1000:
            joined[-1] = SpeechRegion(joined[-1].start, max(joined[-1].end, span_end))
        else:
            joined.append(SpeechRegion(span_start, span_end))
    return joined


def _blocks(samples: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, end) sample spans worth running the model on: not silent, at most ``BLOCK`` long."""
    for start, end in _audible_spans(samples):
        for block_start in range(start, end, BLOCK):
            yield block_start, min(end, block_start + BLOCK)


def _audible_spans(samples: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, end) sample spans around the frames at or above ``GATE_PEAK``, padded by one quiet
    frame before and after; spans whose padding would meet are one span (a model restarted at a
    cut inside speech loses its context there)."""
    span_start = None
    last_loud = None
    for frame_start in range(0, len(samples), BLOCK):
        block = as_float32(samples[frame_start : frame_start + BLOCK])
        frames = len(block) // GATE_FRAME * GATE_FRAME
        peaks = np.abs(block[:frames]).reshape(-1, GATE_FRAME).max(axis=1) if frames else np.zeros(0, dtype=np.float32)
        if frames < len(block):
            peaks = np.append(peaks, np.abs(block[frames:]).max())
        for i in np.flatnonzero(peaks >= GATE_PEAK):
            position = frame_start + int(i) * GATE_FRAME
            # the last span ends a frame after its last loud frame; this one starts a frame before
            if span_start is not None and position - GATE_FRAME > last_loud + 2 * GATE_FRAME:
                yield max(0, span_start - GATE_FRAME), min(len(samples), last_loud + 2 * GATE_FRAME)
                span_start = None
            if span_start is None:
                span_start = position
            last_loud = position
    if span_start is not None:
        yield max(0, span_start - GATE_FRAME), min(len(samples), last_loud + 2 * GATE_FRAME)


# --- live audio: speech probabilities frame by frame, and server-VAD turns ------------------------

FRAME = 512  # samples per Silero frame at 16 kHz (32 ms), as get_speech_timestamps feeds it
FRAME_CONTEXT = 64  # samples of the previous frame the model sees before each frame


class SpeechFrames:
    """Silero's speech probability of each 32 ms frame of a live stream fed piece by piece. The
    model's recurrent state and the previous frame's tail are carried from piece to piece, as
    faster-whisper's ``SileroVADModel`` carries them through one long recording; faster-whisper is
    pinned (requirements.txt), so its ONNX session's inputs are a known contract."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self._session = get_vad_model().session  # one ONNX session, shared: its run() is thread-safe
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(FRAME_CONTEXT, dtype=np.float32)
        self._rest = np.zeros(0, dtype=np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the frames ``samples`` completes (the remainder waits for the next piece)."""
        audio = np.concatenate([self._rest, as_float32(samples)])
        count = len(audio) // FRAME
        self._rest = audio[count * FRAME :]
        if not count:
            return np.zeros(0, dtype=np.float32)
        frames = audio[: count * FRAME].reshape(count, FRAME)
        contexts = np.concatenate([self._context[None, :], frames[:-1, -FRAME_CONTEXT:]])
        self._context = frames[-1, -FRAME_CONTEXT:].copy()
        output, self._h, self._c = self._session.run(None, {"input": np.concatenate([contexts, frames], axis=1), "h": self._h, "c": self._c})
        return np.asarray(output, dtype=np.float32).reshape(-1)


class TurnEvent(NamedTuple):
    kind: str  # "started" | "stopped"
    frame: int  # the frame (counted from the start of the stream) where speech started, or where it was found to have stopped


class TurnDetector:
    """OpenAI Realtime's ``server_vad`` over ``SpeechFrames``' probabilities, with Silero's
    hysteresis (as ``get_speech_timestamps``): speech starts at a frame at or above ``threshold``
    and stops once frames stay under ``threshold - 0.15`` for ``silence_ms``."""

    def __init__(self, threshold: float = 0.5, silence_ms: int = 500):
        self.threshold = threshold
        self.negative = max(threshold - 0.15, 0.01)
        self.silence_frames = max(1, round(silence_ms * SAMPLING_RATE / 1000 / FRAME))
        self.frame = 0  # frames seen
        self.speaking = False
        self._quiet_since: int | None = None

    def feed(self, probabilities: np.ndarray) -> list[TurnEvent]:
        events = []
        for probability in probabilities:
            if probability >= self.threshold:
                self._quiet_since = None
                if not self.speaking:
                    self.speaking = True
                    events.append(TurnEvent("started", self.frame))
            elif self.speaking and probability < self.negative:
                if self._quiet_since is None:
                    self._quiet_since = self.frame
                if self.frame + 1 - self._quiet_since >= self.silence_frames:
                    self.speaking, self._quiet_since = False, None
                    events.append(TurnEvent("stopped", self.frame + 1))
            self.frame += 1
        return events

    def reset(self) -> None:
        """The turn was committed or cleared by the client: listen for the next one."""
        self.speaking, self._quiet_since = False, None
