"""The transformers engine (PyTorch: fp16 + SDPA on GPU, fp32 on CPU): model primitives for
``asr.pipeline``, and speculative decoding with an assistant model.

Windows decode with ``GenerationMixin.generate`` on the encoder output the pipeline computed, under
Whisper's timestamp rules (``WhisperTimeStampLogitsProcessor``) and token suppression, not with
Whisper's own long-form ``generate``: seeking, fallback and stitching are the pipeline's. Word
timings align the text on the checkpoint's alignment heads (cross-attention + DTW, as openai-whisper).
Speculative decoding (a draft model proposing tokens that the main model verifies) is lossless and
supports one sequence at a time in transformers, so assisted requests decode window by window.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSpeechSeq2Seq,
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    WhisperForCausalLM,
    WhisperForConditionalGeneration,
    WhisperTokenizerFast,
)
from transformers.generation.logits_process import WhisperTimeStampLogitsProcessor
from transformers.modeling_outputs import BaseModelOutput

from asr import shaping
from asr.engine import Request, is_silent
from asr.pipeline import DecodingPipeline, GenerateOptions, Hypothesis
from audio import TARGET_SAMPLING_RATE
from compat import dtype_argument, require_supported_transformers
from config import InferenceConfig, ModelSettings, locate_model
from errors import ModelLoadError, ModelNotConfigured
from schemas import Transcript

logger = logging.getLogger(__name__)

# Sampling (temperature fallback) is seeded, so the same audio gives the same transcript.
SAMPLING_SEED = 0
# openai-whisper's limit on the first timestamp: a window's text starts within its first second.
MAX_INITIAL_TIMESTAMP_INDEX = 50
# Windows per forward pass on CPU (requests may ask for more; the GPU takes them all).
CPU_MAX_BATCH_SIZE = 8


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
    request, in case the load changes. Cost: seconds of ``generate`` per decoded token (EWMA). Both
    choices decode the same tokens after the same encoder pass, so this compares like with like
    whatever the clip (per audio second, a 3 s clip costs as much as a 30 s one and the trials'
    clips would decide)."""

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


class SuppressTokens(LogitsProcessor):
    """Never emit these tokens (Whisper's non-speech symbols and special tokens)."""

    def __init__(self, tokens: tuple[int, ...], device: str):
        self.tokens = torch.tensor(sorted(set(tokens)), dtype=torch.long, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.tokens] = -float("inf")
        return scores


class TokenLogprobs(LogitsProcessor):
    """Last in the chain: the log-probability of each token greedy or sampled decoding picks, under
    the scores it was picked from (tempered when sampling), as ``output_scores`` would give them —
    without keeping every step's vocabulary-wide scores, which add up to hundreds of MB for a batch
    of windows. A step's log-softmax is kept only until the next step's ``input_ids`` show which
    token was picked from it."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.previous: torch.Tensor | None = None
        self.picked: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.picked.append(self.previous.gather(1, input_ids[:, -1:])[:, 0])
        self.previous = torch.log_softmax(scores / self.temperature if self.temperature > 0 else scores, dim=-1)
        return scores

    def finish(self, sequences: torch.LongTensor) -> torch.Tensor:
        """(rows, generated tokens) log-probabilities, once generation has stopped."""
        if self.previous is not None:
            self.picked.append(self.previous.gather(1, sequences[:, -1:])[:, 0])
            self.previous = None
        return torch.stack(self.picked, dim=1) if self.picked else torch.zeros((sequences.shape[0], 0), device=sequences.device)

    @classmethod
    def from_output_scores(cls, step_scores: tuple[torch.Tensor, ...], sequences: torch.LongTensor) -> torch.Tensor:
        """The same log-probabilities from scores ``generate`` kept (already tempered)."""
        recorder = cls(temperature=0.0)
        start = sequences.shape[1] - len(step_scores)
        for i, step in enumerate(step_scores):
            recorder(sequences[:, : start + i], step)
        return recorder.finish(sequences)


class Alignment(NamedTuple):
    """As CTranslate2's ``WhisperAlignmentResult``: (text index, time index) pairs and text token probabilities."""

    alignments: list[tuple[int, int]]
    text_token_probs: list[float]


class Encoded(NamedTuple):
    """A batch of windows: the encoder's output, and the features it was computed from (a seq2seq
    draft encodes them itself)."""

    hidden: torch.Tensor
    features: torch.Tensor


class WhisperTranscriber(DecodingPipeline):
    """Owns the Whisper model, its tokenizer and the optional assistant; decodes through the pipeline."""

    def __init__(self, settings: ModelSettings, base_dir: str | Path = "."):
        self.device = settings.resolved_device()
        self.dtype = settings.resolved_dtype()
        if not self.device.startswith("cuda"):
            # Each window's cross-attention cache (1500 frames per decoder layer) lives in host
            # memory for the whole decode, and on CPU batches past a few windows are no faster.
            self.max_batch_size = CPU_MAX_BATCH_SIZE
        token = settings.token()
        location = locate_model(settings.asr_model, base_dir)
        logger.info("loading ASR model %s on %s (%s, %s)", location, self.device, self.dtype, settings.attn_implementation)
        require_supported_transformers()
        try:
            self.model = AutoModelForSpeechSeq2Seq.from_pretrained(location, **dtype_argument(self.dtype), attn_implementation=settings.attn_implementation, token=token).to(self.device).eval()
            self.tokenizer = WhisperTokenizerFast.from_pretrained(location, token=token)
        except OSError as error:
            raise ModelLoadError(f"could not load ASR model {settings.asr_model!r}: {error}") from None
        self.generation_config = self.model.generation_config
        self.multilingual = bool(getattr(self.generation_config, "is_multilingual", False))
        self.n_mels = self.model.config.num_mel_bins
        heads = getattr(self.generation_config, "alignment_heads", None)
        # Without the checkpoint's alignment heads, openai-whisper uses the decoder's upper half.
        layers, count = self.model.config.decoder_layers, self.model.config.decoder_attention_heads
        self.alignment_heads = [tuple(h) for h in heads] if heads else [(layer, head) for layer in range(layers // 2, layers) for head in range(count)]
        self._language_ids = sorted(getattr(self.generation_config, "lang_to_id", {}).values())
        self._own_decoder_attention()
        self.assistant = self._load_assistant(settings, base_dir, token) if settings.assistant_model else None
        self.speculation = SpeculationPolicy()
        self._generate_clock = threading.local()  # per decoding thread: [seconds, tokens] while an 'auto' request is timed
        super().__init__()

    def _own_decoder_attention(self) -> None:
        """Word alignment needs the decoder's cross-attention weights, which only eager attention
        returns: the decoder gets its own copy of the config, switched to eager for alignment
        passes only, so the encoder and generation stay on SDPA."""
        self._decoder_config = copy.copy(self.model.config)
        for module in self.model.get_decoder().modules():
            if getattr(module, "config", None) is self.model.config:
                module.config = self._decoder_config

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
        # The candidate generator sets max_new_tokens per draft round; a checkpoint's max_length
        # beside it makes transformers log a warning at every round.
        assistant.generation_config.max_length = None
        return assistant.to(self.device).eval()

    # --- requests -------------------------------------------------------------------------------

    def check(self, config: InferenceConfig) -> None:
        """Refuse what this deployment cannot do, before any audio is decoded."""
        if config.assisted is True and self.assistant is None:
            raise ModelNotConfigured("assisted=true needs an assistant model; this endpoint has none (set ASSISTANT_MODEL)")
        super().check(config)

    def auto_eligible(self, config: InferenceConfig, duration: float) -> bool:
        """Whether 'auto' weighs speculative decoding at all: it loses on long audio, where it must
        give up batching (the blog: 4.15 vs 3.48 s on 60 s), and it is greedy only."""
        return config.assisted == "auto" and self.assistant is not None and config.num_beams in (None, 1) and config.temperature == 0 and duration <= config.chunk_length_s

    def transcribe_batch(self, requests: list[Request]) -> list[Transcript | Exception]:
        """Plain requests decode batched through the pipeline; assisted ones window by window.
        'auto' requests are decoded alone, timed, to learn which is faster here."""
        results: list[Transcript | Exception | None] = [None] * len(requests)
        plain = []
        for index, request in enumerate(requests):
            duration = max(len(request.samples) / TARGET_SAMPLING_RATE, 1e-3)
            if self.auto_eligible(request.config, duration):
                assisted = self.speculation.choose()
                self._generate_clock.spent = clock = [0.0, 0]
                try:
                    results[index] = self._decode_alone(request, assisted)
                finally:
                    self._generate_clock.spent = None
                if clock[1]:
                    self.speculation.record(assisted, clock[0] / clock[1])
            elif request.config.assisted is True:
                results[index] = self._decode_alone(request, True)
            else:
                plain.append(index)
        for index, result in zip(plain, super().transcribe_batch([requests[i] for i in plain]) if plain else []):
            results[index] = result
        return results  # type: ignore[return-value]

    def _decode_alone(self, request: Request, assisted: bool) -> Transcript | Exception:
        try:
            self.check(request.config)
            if is_silent(request.samples):
                return shaping.silent_transcript(request.config, request.want_words)
            return self.decode([request], assisted=assisted, strategy="assisted-sequential" if assisted else None)[0]
        except Exception as error:
            return error

    # --- model primitives (asr.pipeline.ModelSteps) -------------------------------------------------

    def hf_tokenizer(self) -> Any:
        return self.tokenizer.backend_tokenizer

    def encode(self, features: np.ndarray) -> Encoded:
        inputs = torch.from_numpy(features).to(self.device, self.dtype)
        with torch.inference_mode():
            return Encoded(self.model.get_encoder()(inputs).last_hidden_state, inputs)

    def select(self, encoded: Encoded, rows: list[int]) -> Encoded:
        return Encoded(encoded.hidden[rows], encoded.features[rows])

    def _logits(self, encoded: Encoded, tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(decoder_input_ids=tokens, encoder_outputs=BaseModelOutput(last_hidden_state=encoded.hidden), use_cache=False).logits

    def detect_language(self, encoded: Encoded, rows: list[int]) -> list[str]:
        if not rows:
            return []
        sot = self.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        logits = self._logits(self.select(encoded, rows), torch.full((len(rows), 1), sot, device=self.device))[:, -1]
        ids = torch.tensor(self._language_ids, device=logits.device)
        best = ids[logits[:, ids].argmax(-1)]
        return [self.tokenizer.convert_ids_to_tokens(int(token)).strip("<|>") for token in best]

    def generate(self, encoded: Encoded, prompts: list[list[int]], options: GenerateOptions, sot_index: int) -> list[Hypothesis]:
        prompt = torch.tensor(prompts, device=self.device)
        eot = self.generation_config.eos_token_id
        config = copy.deepcopy(self.generation_config)
        # Suppression by a precomputed index: transformers' SuppressTokensLogitsProcessor rebuilds a
        # vocabulary-wide mask at every step, a third of greedy decoding's time on CPU.
        config.suppress_tokens = None
        config.begin_suppress_tokens = [self.tokenizer.convert_tokens_to_ids("Ġ"), eot]
        config.max_initial_timestamp_index = MAX_INITIAL_TIMESTAMP_INDEX
        config.forced_decoder_ids = None
        processors = LogitsProcessorList([SuppressTokens(options.suppress_tokens, self.device)])
        if options.with_timestamps:
            processors.append(WhisperTimeStampLogitsProcessor(config, begin_index=prompt.shape[1]))
        config.num_beams = options.beam_size
        config.do_sample = options.temperature > 0
        config.temperature, config.top_k, config.top_p = (options.temperature, 0, 1.0) if options.temperature > 0 else (1.0, None, None)
        config.max_length = prompt.shape[1] + options.max_new_tokens
        config.max_new_tokens = None
        # Beams reorder rows and assisted decoding scores drafts it may reject: those read the
        # log-probabilities from output_scores; greedy and sampled rows record them as they go.
        recorder = TokenLogprobs(options.temperature) if options.beam_size == 1 and not options.assisted else None
        if recorder is not None:
            processors.append(recorder)
        config.output_scores = recorder is None
        config.return_dict_in_generate = True
        config.pad_token_id = config.eos_token_id = eot
        kwargs: dict[str, Any] = dict(decoder_input_ids=prompt, encoder_outputs=BaseModelOutput(last_hidden_state=encoded.hidden), generation_config=config, logits_processor=processors)
        if options.temperature > 0:
            torch.manual_seed(SAMPLING_SEED)
        if options.assisted:
            kwargs["assistant_model"] = self.assistant
        if not options.assisted or self.assistant.config.is_encoder_decoder:
            # With pad == eos, generate cannot infer the masks (transformers 4.51 refuses them with a
            # decoder-only draft). A seq2seq draft needs its mask: without one, transformers 5 feeds
            # it the whole sequence every round on top of its cache, which outgrows 448 positions.
            kwargs["decoder_attention_mask"] = torch.ones_like(prompt)
            # Every encoder position is real (windows are padded to 30 s as Whisper was trained):
            # saying so stops generate's warning about a batch without an attention mask.
            kwargs["attention_mask"] = torch.ones(encoded.hidden.shape[:2], dtype=torch.long, device=self.device)
        started = time.perf_counter()
        with torch.inference_mode():
            if options.assisted and self.assistant.config.is_encoder_decoder:
                # A seq2seq draft encodes the audio itself: it gets the features the main encoder had.
                kwargs["input_features"] = encoded.features
            # openai-whisper reads the no-speech probability at the start-of-transcript token, from
            # the first forward pass over the whole prompt: taken from it as it goes by.
            first_pass: list[torch.Tensor] = []
            hook = self.model.proj_out.register_forward_hook(lambda module, args, logits: first_pass.append(logits) if not first_pass else None)
            try:
                output = GenerationMixin.generate(self.model, **kwargs)
            finally:
                hook.remove()
            logits = first_pass[0] if first_pass and first_pass[0].shape[1] > sot_index else self._logits(encoded, prompt[:, : sot_index + 1])
            no_speech = logits[:: max(1, logits.shape[0] // len(prompts)), sot_index if logits.shape[1] > sot_index else -1].float().softmax(-1)[:, self._no_speech_id()].tolist()
            # Per-token log-probabilities under the logits the tokens were chosen from (after
            # suppression and the timestamp rules), as openai-whisper sums them.
            if recorder is not None:
                scores = recorder.finish(output.sequences)
            elif options.beam_size == 1:  # assisted: only the kept tokens' scores, normalized the same way
                scores = TokenLogprobs.from_output_scores(output.scores, output.sequences)
            else:
                scores = self.model.compute_transition_scores(output.sequences, output.scores, output.beam_indices)
        hypotheses = []
        generated = output.sequences[:, prompt.shape[1]:].tolist()
        for row, (tokens, logprobs) in enumerate(zip(generated, scores.float().tolist())):
            finished = eot in tokens
            length = tokens.index(eot) if finished else len(tokens)
            total = sum(logprobs[: length + 1 if finished else length])
            hypotheses.append(Hypothesis(tokens[:length], total / (length + 1), float(no_speech[row]), finished))
        clock = getattr(self._generate_clock, "spent", None)
        if clock is not None:
            clock[0] += time.perf_counter() - started
            clock[1] += sum(len(hypothesis.tokens) + 1 for hypothesis in hypotheses)
        return hypotheses

    def _no_speech_id(self) -> int:
        for token in ("<|nospeech|>", "<|nocaptions|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != self.tokenizer.unk_token_id:
                return token_id
        raise ModelLoadError("the tokenizer has no no-speech token")

    def align(self, encoded: Encoded, sot_sequence: list[int], text_tokens: list[list[int]], num_frames: list[int], median_filter_width: int = 7) -> list[Alignment]:
        """openai-whisper's ``find_alignment``: the alignment heads' cross-attention over the text,
        normalized per frame, median-filtered, averaged, then a DTW path from tokens to frames."""
        eot = self.generation_config.eos_token_id
        no_timestamps = self.tokenizer.convert_tokens_to_ids("<|notimestamps|>")
        results = []
        for row, (text, frames) in enumerate(zip(text_tokens, num_frames)):
            tokens = torch.tensor([[*sot_sequence, no_timestamps, *text, eot]], device=self.device)
            self._decoder_config._attn_implementation = "eager"
            try:
                with torch.inference_mode():
                    output = self.model.model.decoder(input_ids=tokens, encoder_hidden_states=encoded.hidden[row : row + 1], output_attentions=True, use_cache=False)
                    logits = self.model.proj_out(output.last_hidden_state)[0]
            finally:
                self._decoder_config._attn_implementation = self.model.config._attn_implementation
            start = len(sot_sequence)
            probabilities = logits[start : start + len(text), :eot].float().softmax(-1)
            text_token_probs = probabilities[torch.arange(len(text)), torch.tensor(text, dtype=torch.long)].tolist() if text else []
            weights = torch.stack([output.cross_attentions[layer][0, head] for layer, head in self.alignment_heads]).float()
            weights = weights[:, :, : max(1, frames // 2)]
            weights = weights / weights.sum(-1, keepdim=True)  # softmax over the audio's frames only
            std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
            weights = _median_filter((weights - mean) / (std + 1e-10), median_filter_width)
            matrix = weights.mean(0)[start:-1]
            text_indices, time_indices = dtw(-matrix.double().cpu().numpy())
            results.append(Alignment(list(zip(text_indices.tolist(), time_indices.tolist())), text_token_probs))
        return results


def _median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over a sliding window of the last axis, reflect-padded (openai-whisper's)."""
    pad = width // 2
    if width <= 1 or x.shape[-1] <= pad:
        return x
    padded = torch.nn.functional.pad(x[None], (pad, pad, 0, 0), mode="reflect")[0]
    return padded.unfold(-1, width, 1).sort()[0][..., pad]


def dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic time warping of a cost matrix (tokens × frames): the (token, frame) path of least
    total cost, moving diagonally, down or right, with openai-whisper's tie-breaking. Each row of
    the cost table is a running minimum (prefix sums), so it runs in numpy, row by row."""
    rows, columns = x.shape
    cost = np.full((rows + 1, columns + 1), np.inf)
    cost[0, 0] = 0.0
    for i in range(1, rows + 1):
        # cost[i, j] = x[i-1, j-1] + min(cost[i-1, j-1], cost[i-1, j], cost[i, j-1])
        #            = S[j] + min over k <= j of (a[k] - S[k-1]), with S the row's prefix sums.
        above = np.minimum(cost[i - 1, :-1], cost[i - 1, 1:])
        sums = np.concatenate([[0.0], np.cumsum(x[i - 1])])
        cost[i, 1:] = sums[1:] + np.minimum.accumulate(above - sums[:-1])
    i, j = rows, columns
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            diagonal, up, left = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if diagonal < up and diagonal < left:
                i, j = i - 1, j - 1
            elif up < diagonal and up < left:
                i -= 1
            else:
                j -= 1
    path.reverse()
    indices = np.array(path).T
    return indices[0], indices[1]
