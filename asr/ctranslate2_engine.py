"""The CTranslate2 engine (faster-whisper's model, int8 on CPU): model primitives for ``asr.pipeline``."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from asr.engine import Request
from asr.pipeline import DecodingPipeline, GenerateOptions, Hypothesis
from config import InferenceConfig, ModelSettings, locate_model
from errors import ModelLoadError, ModelNotConfigured
from schemas import Transcript

logger = logging.getLogger(__name__)

# Sampling (temperature fallback) is seeded, so the same audio gives the same transcript.
SAMPLING_SEED = 0


def locate_ct2_model(settings: ModelSettings, base_dir: str | Path) -> str:
    """The CTranslate2 weights: ``ct2_model``, else ``<asr_model>-ct2`` beside the checkpoint (what
    faster-whisper loads), else a conversion of the transformers checkpoint (a local directory, or a
    hub id downloaded for it), cached beside it or under ``$HF_HOME/ctranslate2``."""
    if settings.ct2_model:
        return locate_model(settings.ct2_model, base_dir)
    location = Path(locate_model(settings.asr_model, base_dir))
    sibling = location.with_name(location.name + "-ct2")
    if (sibling / "model.bin").is_file():
        return str(sibling)
    if location.is_dir():
        converted = location / "ctranslate2"
    else:
        cache = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "ctranslate2"
        converted = cache / settings.asr_model.replace("/", "--")
    if not (converted / "model.bin").is_file():
        import ctranslate2

        logger.info("converting %s to CTranslate2 in %s", settings.asr_model, converted)
        try:
            # Unquantized on disk: compute_type quantizes at load, so one conversion serves every setting.
            ctranslate2.converters.TransformersConverter(str(location) if location.is_dir() else settings.asr_model, copy_files=["tokenizer.json"]).convert(str(converted), force=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelLoadError(f"asr_backend=ctranslate2 could not convert {settings.asr_model!r} to CTranslate2 ({error}); set CT2_MODEL to converted weights or ASR_BACKEND=transformers") from None
    return str(converted)


class CTranslate2Transcriber(DecodingPipeline):
    """faster-whisper's CTranslate2 Whisper behind the shared pipeline; everything runs on one
    long-lived thread of its own."""

    strategy = "ct2-batched"
    accepts_trimmed_windows = True

    def __init__(self, settings: ModelSettings, base_dir: str | Path = "."):
        from faster_whisper import WhisperModel

        location = locate_ct2_model(settings, base_dir)
        device = settings.resolved_device()
        threads = settings.cpu_threads or settings.torch_threads or os.cpu_count() or 1
        logger.info("loading CTranslate2 ASR model %s on %s (%s, %d threads)", location, device, settings.compute_type, threads)
        # CTranslate2 ran 2-5x slower here when the thread that loaded the model had exited (the
        # server loads models in a short-lived thread): one long-lived thread loads it and runs it.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctranslate2")
        try:
            self.model = self._thread.submit(WhisperModel, location, device="cuda" if device.startswith("cuda") else "cpu", compute_type=settings.compute_type, cpu_threads=threads, local_files_only=True).result()
        except (OSError, RuntimeError, ValueError) as error:
            raise ModelLoadError(f"could not load CTranslate2 model {location!r}: {error}") from None
        self.multilingual = bool(self.model.model.is_multilingual)
        self.n_mels = self.model.model.n_mels
        self.location = location
        # On CPU the encoder costs 15-25 % more per window in batches of 4-8 than one window at a
        # time (attention over 1500 frames per window outgrows the caches), while the decoder gains
        # from batching: encode windows one by one, decode them together.
        self.encode_one_by_one = not device.startswith("cuda")
        self.trim_window = settings.trim_encoder_window
        super().__init__()

    def check(self, config: InferenceConfig) -> None:
        if config.assisted is True:
            # CTranslate2 has no speculative decoding for Whisper; its plain decoding is the fast path.
            raise ModelNotConfigured("assisted=true needs an assistant model (ASSISTANT_MODEL) on the transformers backend; this endpoint runs asr_backend=ctranslate2 without one")
        super().check(config)

    def transcribe_batch(self, requests: list[Request]) -> list[Transcript | Exception]:
        return self._thread.submit(super().transcribe_batch, requests).result()

    # --- model primitives (asr.pipeline.ModelSteps) -------------------------------------------------

    def hf_tokenizer(self) -> Any:
        return self.model.hf_tokenizer

    def encode(self, features: np.ndarray) -> Any:
        import ctranslate2

        if not self.encode_one_by_one or len(features) == 1:
            return self.model.encode(features)
        windows = [np.asarray(self.model.encode(window[None])) for window in features]
        return ctranslate2.StorageView.from_array(np.concatenate(windows))

    def select(self, encoded: Any, rows: list[int]) -> Any:
        import ctranslate2

        return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[rows]))

    def detect_language(self, encoded: Any, rows: list[int]) -> list[str]:
        if not rows:
            return []
        detected = self.model.model.detect_language(encoded if len(rows) == encoded.shape[0] else self.select(encoded, rows))
        return [probabilities[0][0].strip("<|>") for probabilities in detected]

    def generate(self, encoded: Any, prompts: list[list[int]], options: GenerateOptions, sot_index: int) -> list[Hypothesis]:
        import ctranslate2

        kwargs: dict[str, Any] = dict(beam_size=options.beam_size, max_length=options.max_new_tokens, return_scores=True, return_no_speech_prob=True, suppress_blank=True, suppress_tokens=list(options.suppress_tokens))
        if options.temperature > 0:
            ctranslate2.set_random_seed(SAMPLING_SEED)
            kwargs.update(sampling_topk=0, sampling_temperature=options.temperature)
        hypotheses = []
        for result in self.model.model.generate(encoded, prompts, **kwargs):
            tokens = list(result.sequences_ids[0])
            # CTranslate2's score is the sum of log-probabilities over length ** length_penalty (1).
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            hypotheses.append(Hypothesis(tokens, avg_logprob, result.no_speech_prob, finished=len(tokens) < options.max_new_tokens))
        return hypotheses

    def align(self, encoded: Any, sot_sequence: list[int], text_tokens: list[list[int]], num_frames: list[int], median_filter_width: int = 7) -> list[Any]:
        return self.model.model.align(encoded, sot_sequence, text_tokens, num_frames, median_filter_width=median_filter_width)
