"""Whisper speech recognition: model loading and decoding (batched chunks or speculative).

Long audio is cut into ``chunk_length_s`` windows with overlapping strides and decoded in batches by
the transformers pipeline, which stitches the windows back on their common tokens. Speculative
decoding (an assistant model drafting tokens that the main model verifies) is lossless but supports
one sequence at a time in transformers, so assisted requests decode the windows one by one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSpeechSeq2Seq,
    AutomaticSpeechRecognitionPipeline,
    AutoProcessor,
    WhisperForCausalLM,
)

from audio import TARGET_SAMPLING_RATE
from config import InferenceConfig, ModelSettings, Task, Timestamps, locate_model
from errors import InvalidParameters, ModelLoadError, ModelNotConfigured
from schemas import Chunk, Transcript, Word

logger = logging.getLogger(__name__)

# Peak amplitude below which audio is treated as silence (−80 dBFS): Whisper hallucinates text such
# as "Thank you." on digital silence, and there is nothing to transcribe there.
SILENCE_PEAK = 1e-4


class WhisperPipeline(AutomaticSpeechRecognitionPipeline):
    """The stock pipeline, but word-level requests also get the segment-level chunks of the very
    same tokens (the stock one returns either, not both)."""

    def postprocess(self, model_outputs, decoder_kwargs=None, return_timestamps=None, return_language=None):
        segments = None
        if return_timestamps == "word":
            # Decode segments first: super() consumes the tokens. _decode_asr wants strides in seconds.
            rate = self.feature_extractor.sampling_rate
            outputs = [{"tokens": o["tokens"], **({"stride": tuple(v / rate for v in o["stride"])} if "stride" in o else {})} for o in model_outputs]
            time_precision = self.feature_extractor.chunk_length / self.model.config.max_source_positions
            _, optional = self.tokenizer._decode_asr(outputs, return_timestamps=True, return_language=False, time_precision=time_precision)
            segments = optional.get("chunks", [])
        result = super().postprocess(model_outputs, decoder_kwargs, return_timestamps, return_language)
        if segments is not None:
            result["segments"] = segments
        return result


def _load_processor(location: str, token: str | None):
    try:
        return AutoProcessor.from_pretrained(location, token=token)
    except OSError as error:
        raise ModelLoadError(f"could not load the processor of {location!r}: {error}") from None


class WhisperTranscriber:
    """Owns the Whisper model, its processor and the optional assistant; decodes audio to text."""

    def __init__(self, settings: ModelSettings, base_dir: str | Path = "."):
        self.device = settings.resolved_device()
        self.dtype = settings.resolved_dtype()
        token = settings.token()
        location = locate_model(settings.asr_model, base_dir)
        logger.info("loading ASR model %s on %s (%s, %s)", location, self.device, self.dtype, settings.attn_implementation)
        try:
            self.model = AutoModelForSpeechSeq2Seq.from_pretrained(location, dtype=self.dtype, attn_implementation=settings.attn_implementation, token=token).to(self.device).eval()
        except OSError as error:
            raise ModelLoadError(f"could not load ASR model {settings.asr_model!r}: {error}") from None
        processor = _load_processor(location, token)
        self.tokenizer = processor.tokenizer
        self.feature_extractor = processor.feature_extractor
        self.generation_config = self.model.generation_config
        self.multilingual = bool(getattr(self.generation_config, "is_multilingual", False))
        self.pipeline = WhisperPipeline(model=self.model, tokenizer=self.tokenizer, feature_extractor=self.feature_extractor, device=self.model.device, dtype=self.dtype)
        self.assistant = self._load_assistant(settings, base_dir, token) if settings.assistant_model else None

    def _load_assistant(self, settings: ModelSettings, base_dir: str | Path, token: str | None):
        location = locate_model(settings.assistant_model, base_dir)
        logger.info("loading assistant model %s", location)
        try:
            config = AutoConfig.from_pretrained(location, token=token)
            # Decoder-only drafts (distil-large-v2's assistant) reuse the main model's encoder output.
            model_class = WhisperForCausalLM if "WhisperForCausalLM" in (config.architectures or []) else AutoModelForSpeechSeq2Seq
            assistant = model_class.from_pretrained(location, dtype=self.dtype, attn_implementation=self.model.config._attn_implementation, token=token)
        except OSError as error:
            raise ModelLoadError(f"could not load assistant model {settings.assistant_model!r}: {error}") from None
        if assistant.config.vocab_size != self.model.config.vocab_size:
            raise ModelLoadError(f"assistant model {settings.assistant_model!r} has a vocabulary of {assistant.config.vocab_size} tokens, the ASR model {self.model.config.vocab_size}: speculative decoding needs the same tokenizer")
        return assistant.to(self.device).eval()

    # --- requests -------------------------------------------------------------------------------

    def check(self, config: InferenceConfig) -> None:
        """Refuse what this deployment cannot do, before any audio is decoded."""
        if config.assisted and self.assistant is None:
            raise ModelNotConfigured("assisted=true needs an assistant model; this endpoint has none (set ASSISTANT_MODEL)")
        if not self.multilingual:
            if config.task is Task.translate:
                raise InvalidParameters("task=translate needs a multilingual model; this endpoint's model is English-only")
            if config.language not in (None, "en"):
                raise InvalidParameters(f"language={config.language!r} is not supported by this English-only model")

    def detect_language(self, samples: np.ndarray) -> str:
        """Language of the first 30 s, as openai-whisper decides it for a whole file."""
        if not self.multilingual:
            return "en"
        features = self._features(samples[: TARGET_SAMPLING_RATE * self.feature_extractor.chunk_length])
        with torch.inference_mode():
            token_id = int(self.model.detect_language(features, generation_config=self.generation_config)[0])
        return self.tokenizer.convert_ids_to_tokens(token_id).strip("<|>")

    def _features(self, samples: np.ndarray) -> torch.Tensor:
        features = self.feature_extractor(samples, sampling_rate=TARGET_SAMPLING_RATE, return_tensors="pt").input_features
        return features.to(self.device, self.dtype)

    def transcribe(self, samples: np.ndarray, config: InferenceConfig, want_words: bool = False) -> Transcript:
        """Transcribe 16 kHz mono samples. ``want_words`` asks for word timestamps even when the
        response does not show them (the diarization merge needs them)."""
        self.check(config)
        strategy = "assisted-sequential" if config.assisted else "batched"
        if len(samples) == 0 or float(np.abs(samples).max()) < SILENCE_PEAK:
            return Transcript(text="", chunks=[], words=[] if want_words or config.timestamps is Timestamps.word else None, language=config.language, strategy="silence")
        language = config.language or self.detect_language(samples)
        words_needed = want_words or config.timestamps is Timestamps.word
        return_timestamps: bool | str = "word" if words_needed else config.timestamps is Timestamps.segment
        # English-only checkpoints take neither task nor language tokens.
        generate_kwargs: dict[str, Any] = {"task": config.task.value, "language": language} if self.multilingual else {}
        if config.temperature > 0:
            generate_kwargs.update(do_sample=True, temperature=config.temperature)
        if config.prompt:
            generate_kwargs["prompt_ids"] = torch.from_numpy(self.tokenizer.get_prompt_ids(config.prompt)).to(self.device)
        if config.assisted:
            generate_kwargs["assistant_model"] = self.assistant
        with torch.inference_mode():
            output = self.pipeline(
                samples,
                chunk_length_s=config.chunk_length_s,
                batch_size=1 if config.assisted else config.batch_size,
                return_timestamps=return_timestamps,
                generate_kwargs=generate_kwargs,
                ignore_warning=True,
            )
        duration = len(samples) / TARGET_SAMPLING_RATE
        segments = output.get("segments") if words_needed else output.get("chunks")
        chunks = [_chunk(c, duration) for c in segments or []] if return_timestamps else []
        words = [_word(c, duration) for c in output.get("chunks", [])] if words_needed else None
        text = output["text"].strip()
        if config.timestamps is Timestamps.none:
            chunks = []
        return Transcript(text=text, chunks=[c for c in chunks if c.text], words=words, language=language, strategy=strategy)


def _end(timestamp: tuple, duration: float) -> float:
    # The last window may end without a closing timestamp token: it ends with the audio.
    return round(min(float(timestamp[1]), duration), 3) if timestamp[1] is not None else round(duration, 3)


def _chunk(raw: dict, duration: float) -> Chunk:
    start = round(min(float(raw["timestamp"][0] or 0.0), duration), 3)
    return Chunk(text=raw["text"].strip(), timestamp=(start, max(start, _end(raw["timestamp"], duration))))


def _word(raw: dict, duration: float) -> Word:
    start = round(min(float(raw["timestamp"][0] or 0.0), duration), 3)
    return Word(text=raw["text"].strip(), start=start, end=max(start, _end(raw["timestamp"], duration)))
