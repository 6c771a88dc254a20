"""Whisper speech recognition: model loading and decoding (batched chunks or speculative).

Long audio is cut into ``chunk_length_s`` windows with overlapping strides and decoded in batches by
the transformers pipeline, which stitches the windows back on their common tokens. Speculative
decoding (an assistant model drafting tokens that the main model verifies) is lossless but supports
one sequence at a time in transformers, so assisted requests decode the windows one by one.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForSpeechSeq2Seq,
    AutomaticSpeechRecognitionPipeline,
    GenerationMixin,
    WhisperForCausalLM,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizerFast,
)

from audio import TARGET_SAMPLING_RATE
from compat import BEAM_SEARCH_WORD_TIMESTAMPS, dtype_argument, require_supported_transformers
from config import InferenceConfig, ModelSettings, Task, Timestamps, locate_model
from errors import InvalidParameters, ModelLoadError, ModelNotConfigured, RequestCancelled
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


def check_language_support(config: InferenceConfig, multilingual: bool) -> None:
    """English-only checkpoints (*.en) neither translate nor transcribe other languages."""
    if multilingual:
        return
    if config.task is Task.translate:
        raise InvalidParameters("task=translate needs a multilingual model; this endpoint's model is English-only")
    if config.language not in (None, "en"):
        raise InvalidParameters(f"language={config.language!r} is not supported by this English-only model")


def _load_processor(location: str, token: str | None) -> tuple[WhisperFeatureExtractor, WhisperTokenizerFast]:
    # Not AutoProcessor: on transformers 4.x it builds the slow tokenizer, which needs vocab.json and
    # merges.txt; the fast one reads tokenizer.json, which every Whisper checkpoint has.
    try:
        return WhisperFeatureExtractor.from_pretrained(location, token=token), WhisperTokenizerFast.from_pretrained(location, token=token)
    except OSError as error:
        raise ModelLoadError(f"could not load the processor of {location!r}: {error}") from None


class SeqToSeqDraft(WhisperForConditionalGeneration):
    """A seq2seq draft (distil-large-v3 style) that proposes tokens with the plain ``generate``.
    Whisper's own ``generate`` rebuilds its prompt and long-form loop around the decoder input it
    is given, so as a draft (transformers 5.x) it ran past the 448 decoder positions and failed."""

    generate = GenerationMixin.generate


class SpeculationPolicy:
    """Whether speculative decoding is the faster choice for one-window audio on this deployment.

    It depends on the draft and the hardware: the blog measured 2.4x faster with distil-whisper on
    a GPU; a weak draft, or a CPU where every draft step costs nearly a main-model step, makes it
    slower (2x slower here with an untrained two-layer draft of Whisper base). Greedy speculative
    decoding gives the same text as plain greedy decoding, so 'auto' can time both on live requests
    and keep the faster: each is tried ``warmup`` times, then the slower one every ``recheck``-th
    request, in case the load changes. Cost per request: decoding seconds per audio second (EWMA)."""

    def __init__(self, warmup: int = 2, recheck: int = 20, smoothing: float = 0.3):
        self.warmup, self.recheck, self.smoothing = warmup, recheck, smoothing
        self.cost: dict[bool, float] = {}
        self.trials = {True: 0, False: 0}
        self.requests = 0
        self._lock = threading.Lock()

    def choose(self) -> bool:
        with self._lock:
            self.requests += 1
            for assisted in (True, False):
                if self.trials[assisted] < self.warmup:
                    return assisted
            faster = self.cost[True] <= self.cost[False]
            return (not faster) if self.requests % self.recheck == 0 else faster

    def record(self, assisted: bool, seconds_per_audio_second: float) -> None:
        with self._lock:
            self.trials[assisted] += 1
            previous = self.cost.get(assisted)
            self.cost[assisted] = seconds_per_audio_second if previous is None else previous + self.smoothing * (seconds_per_audio_second - previous)


# openai-whisper's beam width when the request names none.
DEFAULT_BEAMS = 5
# openai-whisper's fallback in transformers' terms (its compression ratio is computed on tokens: 1.35).
GREEDY_FALLBACK = {"temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "compression_ratio_threshold": 1.35, "logprob_threshold": -1.0}


class WhisperTranscriber:
    """Owns the Whisper model, its processor and the optional assistant; decodes audio to text."""

    def __init__(self, settings: ModelSettings, base_dir: str | Path = "."):
        self.device = settings.resolved_device()
        self.dtype = settings.resolved_dtype()
        token = settings.token()
        location = locate_model(settings.asr_model, base_dir)
        logger.info("loading ASR model %s on %s (%s, %s)", location, self.device, self.dtype, settings.attn_implementation)
        require_supported_transformers()
        try:
            self.model = AutoModelForSpeechSeq2Seq.from_pretrained(location, **dtype_argument(self.dtype), attn_implementation=settings.attn_implementation, token=token).to(self.device).eval()
        except OSError as error:
            raise ModelLoadError(f"could not load ASR model {settings.asr_model!r}: {error}") from None
        self._keep_encoder_attention()
        self.feature_extractor, self.tokenizer = _load_processor(location, token)
        self.generation_config = self.model.generation_config
        self.multilingual = bool(getattr(self.generation_config, "is_multilingual", False))
        self.pipeline = WhisperPipeline(model=self.model, tokenizer=self.tokenizer, feature_extractor=self.feature_extractor, device=self.model.device, **dtype_argument(self.dtype))
        self.assistant = self._load_assistant(settings, base_dir, token) if settings.assistant_model else None
        self.speculation = SpeculationPolicy()

    def _keep_encoder_attention(self) -> None:
        """Word timestamps need the decoder's cross-attention weights, so transformers' Whisper
        generate switches the model's config to eager attention, and the encoder, whose weights
        nobody reads and which does most of the CPU work, ran eager too (word requests cost 3-4x
        segment ones). The encoder gets its own copy of the config, so it stays on SDPA."""
        shared = self.model.config
        own = copy.copy(shared)
        for module in self.model.get_encoder().modules():
            if getattr(module, "config", None) is shared:
                module.config = own

    def _load_assistant(self, settings: ModelSettings, base_dir: str | Path, token: str | None):
        location = locate_model(settings.assistant_model, base_dir)
        logger.info("loading assistant model %s", location)
        try:
            config = AutoConfig.from_pretrained(location, token=token)
            # Decoder-only drafts (distil-large-v2's assistant) reuse the main model's encoder output.
            model_class = WhisperForCausalLM if "WhisperForCausalLM" in (config.architectures or []) else SeqToSeqDraft
            assistant = model_class.from_pretrained(location, **dtype_argument(self.dtype), attn_implementation=self.model.config._attn_implementation, token=token)
        except OSError as error:
            raise ModelLoadError(f"could not load assistant model {settings.assistant_model!r}: {error}") from None
        if assistant.config.vocab_size != self.model.config.vocab_size:
            raise ModelLoadError(f"assistant model {settings.assistant_model!r} has a vocabulary of {assistant.config.vocab_size} tokens, the ASR model {self.model.config.vocab_size}: speculative decoding needs the same tokenizer")
        return assistant.to(self.device).eval()

    # --- requests -------------------------------------------------------------------------------

    def check(self, config: InferenceConfig) -> None:
        """Refuse what this deployment cannot do, before any audio is decoded."""
        if config.assisted is True and self.assistant is None:
            raise ModelNotConfigured("assisted=true needs an assistant model; this endpoint has none (set ASSISTANT_MODEL)")
        check_language_support(config, self.multilingual)

    def auto_eligible(self, config: InferenceConfig, duration: float) -> bool:
        """Whether 'auto' weighs speculative decoding at all: it loses on long audio, where it must
        give up batching (the blog: 4.15 vs 3.48 s on 60 s), and it is greedy only."""
        return config.assisted == "auto" and self.assistant is not None and config.num_beams in (None, 1) and config.temperature == 0 and duration <= config.chunk_length_s

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

    def transcribe_batch(self, requests: list["Request"]) -> list[Transcript | Exception]:
        # The pipeline batches the windows of one audio; several audios run one after another.
        return transcribe_each(self, requests)

    def transcribe(self, samples: np.ndarray, config: InferenceConfig, want_words: bool = False) -> Transcript:
        """Transcribe 16 kHz mono samples. ``want_words`` asks for word timestamps even when the
        response does not show them (the diarization merge needs them)."""
        self.check(config)
        duration = len(samples) / TARGET_SAMPLING_RATE
        timed = self.auto_eligible(config, duration)
        assisted = self.speculation.choose() if timed else config.assisted is True
        strategy = "assisted-sequential" if assisted else "batched"
        if len(samples) == 0 or float(np.abs(samples).max()) < SILENCE_PEAK:
            return Transcript(text="", chunks=[], words=[] if want_words or config.timestamps is Timestamps.word else None, language=config.language, strategy="silence")
        language = config.language or self.detect_language(samples)
        words_needed = want_words or config.timestamps is Timestamps.word
        return_timestamps: bool | str = "word" if words_needed else config.timestamps is Timestamps.segment
        # English-only checkpoints take neither task nor language tokens.
        generate_kwargs: dict[str, Any] = {"task": config.task.value, "language": language} if self.multilingual else {}
        # Unset, 5 beams (openai-whisper's choice): plain greedy without temperature fallback loses
        # accuracy here (0.165 WER vs 0.103 on the dev short set). Set explicitly: the pipeline's own
        # default differs between transformers 4.x (greedy) and 5.x (5 beams). Speculative decoding
        # and sampling are single-sequence, and 'auto' decodes greedily either way, so its choice
        # changes the speed, never the text.
        single = timed or assisted or config.temperature > 0
        if words_needed and not BEAM_SEARCH_WORD_TIMESTAMPS:
            if (config.num_beams or 1) > 1:
                raise InvalidParameters(f"word timestamps with num_beams > 1 need transformers>=4.53 (this endpoint runs {transformers.__version__}); ask for num_beams=1")
            if not single:  # the default beams cannot give word timestamps here: greedy, and say so
                single, strategy = True, "batched-greedy"
                # with openai-whisper's temperature fallback, without which greedy decoding loops
                # (2-speaker call: WER 3.3 greedy, 0.18 with the fallback, on transformers 4.51.3)
                generate_kwargs.update(GREEDY_FALLBACK)
        generate_kwargs["num_beams"] = config.num_beams or (1 if single else DEFAULT_BEAMS)
        if config.temperature > 0:
            generate_kwargs.update(do_sample=True, temperature=config.temperature)
        if config.prompt:
            generate_kwargs["prompt_ids"] = torch.from_numpy(self.tokenizer.get_prompt_ids(config.prompt)).to(self.device)
        if assisted:
            generate_kwargs["assistant_model"] = self.assistant
        attention = self.model.config._attn_implementation
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                output = self.pipeline(
                    samples,
                    chunk_length_s=config.chunk_length_s,
                    batch_size=1 if assisted else config.batch_size,
                    return_timestamps=return_timestamps,
                    generate_kwargs=generate_kwargs,
                    ignore_warning=True,
                )
        finally:
            # Word timestamps make transformers' Whisper generate switch the model to eager attention
            # (it needs the cross-attention weights) and never switch back: without this, every later
            # request of the process, segment-level ones included, would run eager attention.
            self.model.config._attn_implementation = attention
        if timed:
            self.speculation.record(assisted, (time.perf_counter() - started) / duration)
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


# --- micro-batching and the backend choice -----------------------------------------------------


class Request(NamedTuple):
    """One audio of a micro-batch: what ``transcribe`` takes, as a tuple.

    ``on_segments`` (streaming): called from the decoding thread with each run of newly final
    segments of this request, in time order, before its transcript is returned. ``cancelled``: set
    when nobody waits for the result any more (client gone); decoding stops for this request at
    the next window and its result is ``errors.RequestCancelled``."""

    samples: np.ndarray
    config: InferenceConfig
    want_words: bool = False
    on_segments: Callable[[list[Chunk]], None] | None = None
    cancelled: threading.Event | None = None


def transcribe_each(transcriber: Any, requests: list[Request]) -> list[Transcript | Exception]:
    """One at a time, each failure kept to its own request (the fallback batch entry point)."""
    results: list[Transcript | Exception] = []
    for request in requests:
        try:
            results.append(transcriber.transcribe(request.samples, request.config, request.want_words))
        except Exception as error:  # one bad request must not fail the others
            results.append(error)
    return results


def build_transcriber(settings: ModelSettings, base_dir: str | Path = ".") -> "WhisperTranscriber | CTranslate2Transcriber":
    """The transcriber the ``asr_backend`` setting names; every backend has the same interface."""
    if settings.asr_backend == "ctranslate2":
        return CTranslate2Transcriber(settings, base_dir)
    return WhisperTranscriber(settings, base_dir)


def locate_ct2_model(settings: ModelSettings, base_dir: str | Path) -> str:
    """The CTranslate2 weights: ``ct2_model``, else ``<asr_model>-ct2`` beside the checkpoint (what
    faster-whisper loads), else a conversion of the transformers checkpoint, cached beside it."""
    if settings.ct2_model:
        return locate_model(settings.ct2_model, base_dir)
    location = Path(locate_model(settings.asr_model, base_dir))
    sibling = location.with_name(location.name + "-ct2")
    if (sibling / "model.bin").is_file():
        return str(sibling)
    if not location.is_dir():
        raise ModelLoadError(f"asr_backend=ctranslate2 needs CTranslate2 weights: set CT2_MODEL (hub ids such as {settings.asr_model!r} are not converted here)")
    converted = location / "ctranslate2"
    if not (converted / "model.bin").is_file():
        import ctranslate2

        logger.info("converting %s to CTranslate2 in %s", location, converted)
        # Unquantized on disk: compute_type quantizes at load, so one conversion serves every setting.
        ctranslate2.converters.TransformersConverter(str(location), copy_files=["tokenizer.json"]).convert(str(converted), force=True)
    return str(converted)


class CTranslate2Transcriber:
    """faster-whisper's engine (CTranslate2, int8 on CPU) behind the same interface and schema.

    Decoding follows faster-whisper's ``BatchedInferencePipeline``: Silero VAD cuts the audio into
    speech chunks of at most 30 s, chunks are decoded in batches and their timestamps mapped back to
    the original audio. Unlike it, ``transcribe_batch`` pools the chunks of several requests into
    the same ``generate`` calls (the server's micro-batching), and the language is read from the
    encoder output of each request's first chunk instead of a separate encoder pass."""

    def __init__(self, settings: ModelSettings, base_dir: str | Path = "."):
        import os

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
        self.location = location
        # On CPU the encoder costs 15-25 % more per window in batches of 4-8 than one window at a
        # time (measured: attention over 1500 frames per window outgrows the caches), while the
        # decoder gains from batching: encode windows one by one, decode them together.
        self.encode_one_by_one = not device.startswith("cuda")
        self.trim_window = settings.trim_encoder_window

    def check(self, config: InferenceConfig) -> None:
        if config.assisted is True:
            # CTranslate2 has no speculative decoding for Whisper; its plain decoding is the fast path.
            raise ModelNotConfigured("assisted=true needs the transformers backend with an assistant model; this endpoint runs asr_backend=ctranslate2")
        check_language_support(config, self.multilingual)

    def detect_language(self, samples: np.ndarray) -> str:
        if not self.multilingual:
            return "en"
        language, _, _ = self._thread.submit(self.model.detect_language, audio=samples[: TARGET_SAMPLING_RATE * 30]).result()
        return language

    def transcribe(self, samples: np.ndarray, config: InferenceConfig, want_words: bool = False) -> Transcript:
        result = self.transcribe_batch([Request(samples, config, want_words)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def transcribe_batch(self, requests: list[Request]) -> list[Transcript | Exception]:
        """Transcripts of several audios, their chunks decoded together; each failure stays with
        its own request. Requests decode together when they share the decoding options."""
        return self._thread.submit(self._transcribe_batch, requests).result()

    def _transcribe_batch(self, requests: list[Request]) -> list[Transcript | Exception]:
        results: list[Transcript | Exception | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            try:
                self.check(request.config)
            except Exception as error:
                results[index] = error
                continue
            samples, config = request.samples, request.config
            if len(samples) == 0 or float(np.abs(samples).max()) < SILENCE_PEAK:
                results[index] = Transcript(text="", chunks=[], words=[] if request.want_words or config.timestamps is Timestamps.word else None, language=config.language, strategy="silence")
                continue
            groups.setdefault(_options_key(request), []).append(index)
        for indices in groups.values():
            try:
                for index, transcript in zip(indices, self._decode([requests[i] for i in indices])):
                    results[index] = transcript
            except Exception as error:  # e.g. out of memory: retry one by one so only the culprit fails
                if len(indices) == 1:
                    results[indices[0]] = error
                else:
                    for index in indices:
                        results[index] = self._transcribe_batch([requests[index]])[0]
        return results  # type: ignore[return-value]

    def _decode(self, requests: list[Request]) -> list[Transcript | Exception]:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import Segment, Word as FWWord, get_ctranslate2_storage, get_suppressed_tokens, restore_speech_timestamps
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        config, want_words = requests[0].config, requests[0].want_words or requests[0].config.timestamps is Timestamps.word
        # Segment timestamps come from timestamp tokens; without them each VAD chunk is one segment.
        with_timestamps = want_words or config.timestamps is not Timestamps.none
        model = self.model
        vad = VadOptions(max_speech_duration_s=config.chunk_length_s, min_silence_duration_ms=160)
        # Each request's speech chunks (≤ chunk_length_s), flattened: (request index, chunk metadata, features).
        speech, rows = [], []
        for r, request in enumerate(requests):
            clips = get_speech_timestamps(request.samples, vad)
            speech.append(clips)
            if not clips:
                continue
            chunks, metadata = collect_chunks(request.samples, clips, max_duration=config.chunk_length_s)
            # Trimmed windows only for audio whose speech fits one window (measured: on long audio
            # they cost WER, 0.110 -> 0.116 on the dev sonnets, for little speed).
            rows += [_Row(r, meta["offset"], meta["duration"], model.feature_extractor(chunk)[..., :-1], full_window=len(chunks) > 1) for chunk, meta in zip(chunks, metadata)]
        languages: list[str | None] = [request.config.language if self.multilingual else "en" for request in requests]
        previous = model.hf_tokenizer.encode(" " + config.prompt.strip(), add_special_tokens=False).ids if config.prompt else []
        options = dict(beam_size=config.num_beams or 1, max_length=model.max_length, return_scores=True, return_no_speech_prob=True, suppress_blank=True)
        if config.temperature > 0:
            options.update(sampling_topk=0, sampling_temperature=config.temperature)
        segments: list[list[tuple[float, dict]]] = [[] for _ in requests]
        last_speech = [0.0 for _ in requests]
        batch_size = max(1, config.batch_size)
        def restore(items: list[tuple[float, dict]], clips: list[dict]) -> list:
            return list(restore_speech_timestamps(
                (Segment(id=i, seek=s["seek"], start=s["start"], end=s["end"], text=s["text"], tokens=s["tokens"], avg_logprob=0.0, compression_ratio=0.0, no_speech_prob=0.0, temperature=config.temperature,
                         words=[FWWord(**w) for w in s["words"]] if want_words else None) for i, (_, s) in enumerate(items)),
                clips, TARGET_SAMPLING_RATE)) if clips else []

        # Streaming: the first batch is a single window, so the first text is out after one window's
        # decode instead of after the whole batch; the rest still decode batched.
        first_batch = 1 if any(request.on_segments for request in requests) else batch_size
        delivered = [0 for _ in requests]
        while rows:
            rows = [row for row in rows if not _is_cancelled(requests[row.request])]
            if not rows:
                break
            # Rows decode together only in windows of the same size, so a result never depends on
            # which other requests shared the batch.
            widths = [self._window_frames(row, with_timestamps) for row in rows]
            batch, rest = [], []
            for row, row_width in zip(rows, widths):
                (batch if row_width == widths[0] and len(batch) < first_batch else rest).append(row)
            first_batch = batch_size
            width, rows = widths[0], rest
            # A request's language is its first chunk's (rows keep each request's chunks in order).
            undecided = {row.request: i for i, row in reversed(list(enumerate(batch))) if languages[row.request] is None}
            encoder_output, detected = self._encode(np.stack([pad_or_trim(row.features, width) for row in batch]), list(undecided.values()))
            for r, language in zip(undecided, detected):
                languages[r] = language
            tokenizers = [Tokenizer(model.hf_tokenizer, self.multilingual, task=config.task.value, language=languages[row.request]) for row in batch]
            suppress = list(get_suppressed_tokens(tokenizers[0], [-1]))
            prompts = [model.get_prompt(tokenizer, previous, without_timestamps=not with_timestamps) for tokenizer in tokenizers]
            outputs = model.model.generate(encoder_output, prompts, suppress_tokens=suppress, **options)
            sizes, chunk_segments, remainders, retries = [], [], [], []
            for row, output, tokenizer in zip(batch, outputs, tokenizers):
                size = min(int(np.ceil(row.duration) * model.frames_per_second), row.features.shape[-1])
                sizes.append(size)
                tokens = output.sequences_ids[0]
                if with_timestamps:
                    parts, seek, _ = model._split_segments_by_timestamps(tokenizer=tokenizer, tokens=tokens, time_offset=row.offset, segment_size=size, segment_duration=row.duration, seek=0)
                    if width < N_FRAMES and not _covers(parts, seek, row, tokenizer, fps=model.frames_per_second):
                        # A trimmed window lost speech or looped: decode it again in a full window.
                        retries.append(row._replace(full_window=True))
                        chunk_segments.append([])
                        continue
                    # Whisper often stops at a timestamp before the window's end, expecting the next
                    # window to go on from there (openai-whisper's seek loop): decode that rest too.
                    if 0 < seek and size - seek > model.frames_per_second:
                        remainders.append(row._replace(offset=row.offset + seek / model.frames_per_second, duration=row.duration - seek / model.frames_per_second, features=row.features[:, seek:]))
                else:
                    parts = [{"tokens": tokens, "start": row.offset, "end": row.offset + row.duration}]
                chunk_segments.append([dict(part, text=tokenizer.decode(part["tokens"]), seek=int(row.offset * model.frames_per_second)) for part in parts])
            if want_words:
                self._add_words([row.request for row in batch], chunk_segments, tokenizers, encoder_output, sizes, last_speech)
            for row, parts in zip(batch, chunk_segments):
                segments[row.request] += [(row.offset, part) for part in parts if part["tokens"]]
            rows = retries + remainders + rows
            for r, request in enumerate(requests):
                if request.on_segments:
                    # Final: the segments before the earliest window of this request still to decode.
                    frontier = min((row.offset for row in rows if row.request == r), default=float("inf"))
                    ready = [item for item in sorted(segments[r], key=lambda item: item[0]) if item[0] < frontier]
                    chunks = self._transcript(request, restore(ready, speech[r]), languages[r] or config.language).chunks
                    if len(chunks) > delivered[r]:
                        request.on_segments(chunks[delivered[r]:])
                        delivered[r] = len(chunks)

        transcripts: list[Transcript | Exception] = []
        for r, request in enumerate(requests):
            if _is_cancelled(request):
                transcripts.append(RequestCancelled("the request was cancelled (client gone); decoding stopped"))
                continue
            transcript = self._transcript(request, restore(sorted(segments[r], key=lambda item: item[0]), speech[r]), languages[r] or config.language)
            if request.on_segments and transcript.chunks[delivered[r]:]:
                request.on_segments(transcript.chunks[delivered[r]:])
            transcripts.append(transcript)
        return transcripts

    def _window_frames(self, row: "_Row", with_timestamps: bool) -> int:
        """Encoder frames for a chunk: Whisper's full 30 s window, or with ``trim_encoder_window``
        for short audio the chunk + at least 5 s, in 5 s steps from 10 s, which cuts the encoder's
        work and the decoder's cross-attention. Whisper was trained on full windows only: trimmed
        ones are used where timestamps let the result be checked, and redone in full when it fails."""
        if not self.trim_window or not with_timestamps or row.full_window:
            return N_FRAMES
        return min(N_FRAMES, max(TRIMMED_MIN_FRAMES, -(-(row.features.shape[-1] + TRIMMED_MARGIN_FRAMES) // TRIMMED_STEP_FRAMES) * TRIMMED_STEP_FRAMES))

    def _encode(self, features: np.ndarray, detect_rows: list[int]):
        """Encoder output of a batch of windows, and the language detected in ``detect_rows`` of it
        (only there: detection runs the decoder once per row it is given)."""
        import ctranslate2

        if self.encode_one_by_one:
            windows = [self.model.encode(window[None]) for window in features]
            detected = [self.model.model.detect_language(windows[i])[0] for i in detect_rows]
            encoded = windows[0] if len(windows) == 1 else ctranslate2.StorageView.from_array(np.concatenate([np.asarray(window) for window in windows]))
        else:
            encoded = self.model.encode(features)
            everything = self.model.model.detect_language(encoded) if detect_rows else []
            detected = [everything[i] for i in detect_rows]
        return encoded, [probabilities[0][0].strip("<|>") for probabilities in detected]

    def _add_words(self, batch: list[int], chunk_segments, tokenizers, encoder_output, sizes, last_speech) -> None:
        """Word timings by faster-whisper's cross-attention alignment, one request at a time so each
        keeps its own "last speech" state (results then do not depend on the batch's company)."""
        import ctranslate2

        encoded = np.asarray(encoder_output) if len(batch) > 1 else None
        for r in dict.fromkeys(batch):
            rows = [i for i, request in enumerate(batch) if request == r and chunk_segments[i]]
            if not rows:  # every window of it is to be decoded again
                continue
            features = encoder_output if encoded is None else ctranslate2.StorageView.from_array(np.ascontiguousarray(encoded[rows]))
            last_speech[r] = self.model.add_word_timestamps([chunk_segments[i] for i in rows], tokenizers[rows[0]], features, [sizes[i] for i in rows], "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、", last_speech[r]) or last_speech[r]

    def _transcript(self, request: Request, segments: list, language: str | None) -> Transcript:
        config = request.config
        duration = len(request.samples) / TARGET_SAMPLING_RATE
        want_words = request.want_words or config.timestamps is Timestamps.word
        text = "".join(segment.text for segment in segments).strip()
        chunks = [] if config.timestamps is Timestamps.none else [
            _chunk({"text": s.text, "timestamp": (s.start, s.end)}, duration) for s in segments
        ]
        words = [_word({"text": w.word, "timestamp": (w.start, w.end)}, duration) for s in segments for w in (s.words or [])] if want_words else None
        return Transcript(text=text, chunks=[c for c in chunks if c.text], words=words, language=language, strategy="ct2-batched")


class _Row(NamedTuple):
    """A speech chunk of one request: where it sits in the request's speech-only timeline (s) and
    its log-Mel features (unpadded); ``full_window`` once a trimmed window failed it."""

    request: int
    offset: float
    duration: float
    features: np.ndarray
    full_window: bool = False


N_FRAMES = 3000  # Whisper's 30 s window in log-Mel frames
# Trimmed windows, measured on the dev short set (25 clips): margin ≥ 5 s, minimum 10 s, 5 s steps
# gave WER 0.0905 (full windows 0.0874) at 1.6-1.8x the speed; 3 s margins or 15 s minimums lost
# words on a 3 s clip.
TRIMMED_MARGIN_FRAMES, TRIMMED_MIN_FRAMES, TRIMMED_STEP_FRAMES = 500, 1000, 500


def _is_cancelled(request: Request) -> bool:
    return request.cancelled is not None and request.cancelled.is_set()


def _covers(parts: list[dict], seek: int, row: _Row, tokenizer, fps: int) -> bool:
    """Whether a trimmed window's segments plausibly transcribe its chunk: they reach to within
    1.5 s of the chunk's end (VAD chunks end in speech, plus 0.4 s padding) unless the model stopped
    early to go on in a next window, and the text does not loop (openai-whisper's compression test)."""
    from faster_whisper.transcribe import get_compression_ratio

    text = "".join(tokenizer.decode(part["tokens"]) for part in parts).strip()
    if text and get_compression_ratio(text) > 2.4:
        return False
    reached = (parts[-1]["end"] - row.offset) if parts and parts[-1]["tokens"] else 0.0
    stopped_early = 0 < seek < row.features.shape[-1] - fps
    return stopped_early or reached >= row.duration - 1.5


def _options_key(request: Request) -> tuple:
    """Requests that can share ``generate`` calls: same task, prompt, sampling, chunking, batch size
    and timestamp needs (the language may differ: only the language token changes)."""
    config = request.config
    words = request.want_words or config.timestamps is Timestamps.word
    return (config.task, config.prompt, config.temperature, config.num_beams, config.chunk_length_s, config.batch_size, words, config.timestamps is Timestamps.none)
