"""Speaker diarization (pyannote.audio) and the merge of speaker turns with the transcript.

Contract used by handler.py (filled in by the diarization work):
- ``Diarizer.load(settings, base_dir) -> Diarizer``: hub id or local pipeline directory; clear
  ``ModelLoadError`` on a missing/invalid token or directory.
- ``Diarizer.diarize(samples16k, num_speakers=None, min_speakers=None, max_speakers=None) -> list[SpeakerSegment]``
- ``merge_speakers(transcript, turns) -> (speakers: list[SpeakerTurn], chunks: list[Chunk], words: list[Word] | None)``
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from config import ModelSettings
from errors import ModelLoadError
from schemas import Chunk, SpeakerSegment, SpeakerTurn, Transcript, Word


class Diarizer:
    @classmethod
    def load(cls, settings: ModelSettings, base_dir: str | Path) -> "Diarizer":
        raise ModelLoadError("diarization is not available yet")

    def diarize(self, samples: np.ndarray, num_speakers: int | None = None, min_speakers: int | None = None, max_speakers: int | None = None) -> list[SpeakerSegment]:
        raise NotImplementedError


def merge_speakers(transcript: Transcript, turns: list[SpeakerSegment]) -> tuple[list[SpeakerTurn], list[Chunk], list[Word] | None]:
    raise NotImplementedError
