"""Speech regions of 16 kHz audio (Silero VAD, as faster-whisper's batched pipeline runs it).

One place that decides where speech is: the decoding pipeline cuts its windows from these regions and
diarization runs only over them, so audio without speech costs almost nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SAMPLING_RATE = 16000


class SpeechRegion(NamedTuple):
    start: float  # seconds
    end: float


def detect_speech(samples: np.ndarray, *, max_speech_s: float = float("inf"), min_silence_ms: int = 160, threshold: float = 0.5, pad_ms: int = 400) -> list[SpeechRegion]:
    """Regions of speech in 16 kHz mono float32 ``samples``, each at most ``max_speech_s`` long."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if len(samples) == 0:
        return []
    options = VadOptions(threshold=threshold, max_speech_duration_s=max_speech_s, min_silence_duration_ms=min_silence_ms, speech_pad_ms=pad_ms)
    return [SpeechRegion(region["start"] / SAMPLING_RATE, region["end"] / SAMPLING_RATE) for region in get_speech_timestamps(samples, options)]
