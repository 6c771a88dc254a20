"""The engine ``ASR_BACKEND`` names: one entry per engine, each behind ``asr.engine.Transcriber``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from asr.engine import Transcriber
from config import ModelSettings


def _transformers(settings: ModelSettings, base_dir: str | Path) -> Transcriber:
    from asr.transformers_engine import WhisperTranscriber

    return WhisperTranscriber(settings, base_dir)


def _ctranslate2(settings: ModelSettings, base_dir: str | Path) -> Transcriber:
    from asr.ctranslate2_engine import CTranslate2Transcriber

    return CTranslate2Transcriber(settings, base_dir)


# Engines import their libraries when chosen: a CTranslate2 deployment never loads torch's Whisper.
ENGINES: dict[str, Callable[[ModelSettings, str | Path], Transcriber]] = {
    "transformers": _transformers,
    "ctranslate2": _ctranslate2,
}


def build_transcriber(settings: ModelSettings, base_dir: str | Path = ".") -> Transcriber:
    """The transcriber the ``asr_backend`` setting names (``auto``: see ``ModelSettings.resolved_backend``)."""
    return ENGINES[settings.resolved_backend()](settings, base_dir)
