"""Speech regions of 16 kHz audio (Silero VAD, as faster-whisper's batched pipeline runs it).

One place that decides where speech is: the decoding pipeline cuts its windows from these regions and
diarization runs only over them, so audio without speech costs almost nothing.

Two things keep long audio cheap: stretches whose peak stays under ``GATE_PEAK`` (digital silence,
gaps in a recording) never reach the model, and the model runs block by block, because
faster-whisper's wrapper copies its whole input about twice (padding, context windows).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from audio import as_float32

SAMPLING_RATE = 16000
GATE_PEAK = 1e-3  # -60 dBFS: quieter than any recording's noise floor, so only true silence is skipped
GATE_FRAME = SAMPLING_RATE // 2
BLOCK = 300 * SAMPLING_RATE  # samples per VAD call


class SpeechRegion(NamedTuple):
    start: float  # seconds
    end: float


def detect_speech(samples: np.ndarray, *, max_speech_s: float = float("inf"), min_silence_ms: int = 160, threshold: float = 0.5, pad_ms: int = 400) -> list[SpeechRegion]:
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


def _blocks(samples: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, end) sample spans worth running the model on: not silent, at most ``BLOCK`` long."""
    for start, end in _audible_spans(samples):
        for block_start in range(start, end, BLOCK):
            yield block_start, min(end, block_start + BLOCK)


def _audible_spans(samples: np.ndarray) -> Iterator[tuple[int, int]]:
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
            if span_start is not None and position - last_loud > 2 * GATE_FRAME:
                yield max(0, span_start - GATE_FRAME), min(len(samples), last_loud + 2 * GATE_FRAME)
                span_start = None
            if span_start is None:
                span_start = position
            last_loud = position
    if span_start is not None:
        yield max(0, span_start - GATE_FRAME), min(len(samples), last_loud + 2 * GATE_FRAME)
