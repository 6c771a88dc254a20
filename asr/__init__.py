"""Speech recognition: the request type and engine interface (``engine``), the decoding pipeline
both engines run (``pipeline``), the engines' model primitives (``transformers_engine``,
``ctranslate2_engine``), the registry keyed by ``ASR_BACKEND`` (``registry``) and the one place
the response's chunks and words are shaped (``shaping``)."""

from asr.engine import SILENCE_PEAK, Request, Transcriber, check_language_support
from asr.registry import ENGINES, build_transcriber

__all__ = ["ENGINES", "SILENCE_PEAK", "Request", "Transcriber", "build_transcriber", "check_language_support"]
