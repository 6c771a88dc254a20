"""faster-whisper's segment splitting and word-timing steps, used by both engines through this one adapter.

They are methods of ``faster_whisper.WhisperModel`` that read a few attributes of the model object
(``time_precision``, ``input_stride``, ``frames_per_second``, ``tokens_per_second``) and, for word
timings, its CTranslate2 model's ``align``. ``Steps`` gives them exactly that, with the engine's own
``align`` (CTranslate2's, or the cross-attention DTW of the transformers engine), so the rules that
turn tokens into segments and words are the same for every engine. They are private API:
requirements.txt pins faster-whisper to the version they were read from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faster_whisper import WhisperModel

# Punctuation merged into the neighbouring word (faster-whisper's and openai-whisper's defaults).
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"

FRAMES_PER_SECOND = 100  # log-Mel frames per second of 16 kHz audio (hop 160)
INPUT_STRIDE = 2  # encoder positions per frame pair
TIME_PRECISION = 0.02  # seconds per timestamp token


class _Aligner:
    def __init__(self, align: Callable[..., list[Any]]):
        self.align = align


class Steps:
    """The attributes faster-whisper's methods read, and those methods, bound to them."""

    time_precision = TIME_PRECISION
    input_stride = INPUT_STRIDE
    frames_per_second = FRAMES_PER_SECOND
    tokens_per_second = FRAMES_PER_SECOND // INPUT_STRIDE

    _split_segments_by_timestamps = WhisperModel._split_segments_by_timestamps
    find_alignment = WhisperModel.find_alignment
    _add_word_timestamps = WhisperModel.add_word_timestamps

    def __init__(self, align: Callable[..., list[Any]]):
        """``align(encoder_output, sot_sequence, text_tokens, num_frames, median_filter_width)``:
        per row, an object with ``alignments`` ((text index, time index) pairs) and
        ``text_token_probs``, as CTranslate2's ``Whisper.align`` returns."""
        self.model = _Aligner(align)

    def split_segments(self, tokenizer, tokens: list[int], *, time_offset: float, segment_size: int, segment_duration: float) -> tuple[list[dict], int]:
        """A window's timestamped segments (dicts with seek, start, end, tokens) and the frame the
        next window should start from (before the window's end when the model stopped early)."""
        segments, seek, _ = self._split_segments_by_timestamps(tokenizer=tokenizer, tokens=tokens, time_offset=time_offset, segment_size=segment_size, segment_duration=segment_duration, seek=0)
        return segments, seek

    def add_word_timestamps(self, segments: list[list[dict]], tokenizer, encoder_output, num_frames: list[int], last_speech: float) -> float:
        """Adds ``words`` to each segment of each window (windows in the order of ``encoder_output``'s rows)."""
        return self._add_word_timestamps(segments, tokenizer, encoder_output, num_frames, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, last_speech) or last_speech
