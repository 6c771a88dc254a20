"""The decoding pipeline both engines run: speech windows, batched decoding, fallback, seek-on, words.

decoded audio → speech regions (Silero VAD, as faster-whisper's batched pipeline cuts them) →
windows of at most ``chunk_length_s`` → batched encode, then batched decode with the request's
prompt → per window: openai-whisper's quality checks (compression ratio, average log-probability,
no-speech probability) with its temperature fallback, a token budget per second of audio against
runaway loops, and seek-on (a window that stops at a timestamp before its end is decoded again from
there) → segments mapped back to the original audio → word timings by cross-attention alignment.

The engines (``ctranslate2_engine``, ``transformers_engine``) supply only model primitives
(``ModelSteps``): encode, detect the language, generate a batch of windows from prompts, align
words. Every decision above is made here, once, so both give the same segments for the same
decisions. Windows of several requests decode in the same batches (the server's micro-batching).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from asr import shaping
from asr.engine import Request, check_language_support, cancelled_error, is_cancelled, is_silent
from asr.faster_whisper_steps import FRAMES_PER_SECOND, Steps
from audio import TARGET_SAMPLING_RATE
from config import InferenceConfig, Timestamps
from schemas import Transcript

logger = logging.getLogger(__name__)

N_FRAMES = 3000  # Whisper's 30 s window in log-Mel frames
HOP_LENGTH = TARGET_SAMPLING_RATE // FRAMES_PER_SECOND  # samples per log-Mel frame
MAX_DECODER_TOKENS = 448  # Whisper's decoder positions, prompt included
# openai-whisper's fallback: temperatures tried in turn while a window's decoding fails the checks.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4  # gzip ratio of the text above which it repeats itself
LOGPROB_THRESHOLD = -1.0  # average log-probability below which a decoding is doubtful
NO_SPEECH_THRESHOLD = 0.6  # with a doubtful log-probability, a window this likely silent is skipped
# Runaway stop: fast speech is ~7 tokens a second with timestamps; a window may use twice that
# (plus a floor for short windows) before it counts as looping.
TOKENS_PER_SECOND_BUDGET = 14
MIN_TOKEN_BUDGET = 24
# Trimmed windows (TRIM_ENCODER_WINDOW): ≥ 5 s of margin, ≥ 10 s, 5 s steps; smaller margins lost
# words on short clips (docs/decoding.md: TRIM_ENCODER_WINDOW).
TRIMMED_MARGIN_FRAMES, TRIMMED_MIN_FRAMES, TRIMMED_STEP_FRAMES = 500, 1000, 500


class Hypothesis(NamedTuple):
    """A window's decoding: its tokens (text and timestamps, neither prompt nor end-of-text), their
    average log-probability (openai-whisper's: sum over tokens and end-of-text / (tokens + 1)), the
    probability of no speech at the start of transcript, and whether it ended (end-of-text) within
    its token budget."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    finished: bool


@dataclass(frozen=True)
class GenerateOptions:
    beam_size: int
    temperature: float
    max_new_tokens: int
    suppress_tokens: tuple[int, ...]
    with_timestamps: bool
    assisted: bool = False


class ModelSteps(Protocol):
    """What an engine gives the pipeline: a Whisper model's primitives, on its own runtime."""

    multilingual: bool
    n_mels: int
    accepts_trimmed_windows: bool  # whether the encoder takes windows shorter than 30 s

    def hf_tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` of the checkpoint."""

    def encode(self, features: np.ndarray) -> Any:
        """Encoder output of a batch of log-Mel windows (batch, n_mels, frames)."""

    def select(self, encoded: Any, rows: list[int]) -> Any:
        """The encoder output of some rows of a batch."""

    def detect_language(self, encoded: Any, rows: list[int]) -> list[str]:
        """The most likely language code of each of ``rows``."""

    def generate(self, encoded: Any, prompts: list[list[int]], options: GenerateOptions, sot_index: int) -> list[Hypothesis]:
        """One hypothesis per row; ``prompts[i][sot_index]`` is the start-of-transcript token."""

    def align(self, encoded: Any, sot_sequence: list[int], text_tokens: list[list[int]], num_frames: list[int], median_filter_width: int = 7) -> list[Any]:
        """Per row, (text index, time index) pairs and token probabilities, as CTranslate2's ``align``."""


class _Row(NamedTuple):
    """A speech window of one request: where it sits in the request's speech-only timeline (s), its
    log-Mel features (``frames`` of audio, then a tail of silence: see ``log_mel``); ``full_window``
    once a trimmed window failed it."""

    request: int
    offset: float
    duration: float
    features: np.ndarray
    frames: int
    full_window: bool = False


class _Window(NamedTuple):
    """A decoded window: its segments (faster-whisper's dicts) and what it was decided with."""

    parts: list[dict]
    hypothesis: Hypothesis
    compression_ratio: float
    temperature: float


def compression_ratio(text: str) -> float:
    """openai-whisper's repetition measure: text length over its zlib-compressed length."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def token_budget(duration: float) -> int:
    return MIN_TOKEN_BUDGET + int(np.ceil(TOKENS_PER_SECOND_BUDGET * duration))


def options_key(request: Request) -> tuple:
    """Requests that can share ``generate`` calls: same task, prompt, sampling, chunking, batch size
    and timestamp needs (the language may differ: only the language token changes)."""
    config = request.config
    return (config.task, config.prompt, config.temperature, config.num_beams, config.chunk_length_s, config.batch_size, shaping.wants_words(config, request.want_words), config.timestamps is Timestamps.none)


class DecodingPipeline:
    """The engine-neutral decoding; an engine subclasses it and implements ``ModelSteps``."""

    strategy = "batched"
    multilingual: bool
    n_mels: int
    accepts_trimmed_windows = False
    trim_window = False
    max_batch_size: int | None = None  # an engine's own cap on windows per forward pass

    def __init__(self) -> None:
        from faster_whisper.feature_extractor import FeatureExtractor

        self.feature_extractor = FeatureExtractor(feature_size=self.n_mels)
        self.steps = Steps(self.align)

    # --- the interface the handler uses (asr.engine.Transcriber) ------------------------------------

    def check(self, config: InferenceConfig) -> None:
        check_language_support(config, self.multilingual)

    def transcribe(self, samples: np.ndarray, config: InferenceConfig, want_words: bool = False) -> Transcript:
        result = self.transcribe_batch([Request(samples, config, want_words)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def transcribe_batch(self, requests: list[Request]) -> list[Transcript | Exception]:
        """One result per request, in order; a failure stays in its own request's place. Requests
        decode together when they share the decoding options."""
        results: list[Transcript | Exception | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            try:
                self.check(request.config)
            except Exception as error:
                results[index] = error
                continue
            if is_silent(request.samples):
                results[index] = shaping.silent_transcript(request.config, request.want_words)
                continue
            groups.setdefault(self.group_key(request), []).append(index)
        for key, indices in groups.items():
            try:
                for index, transcript in zip(indices, self.decode([requests[i] for i in indices], **self.group_options(key))):
                    results[index] = transcript
            except Exception as error:  # e.g. out of memory: retry one by one so only the culprit fails
                if len(indices) == 1:
                    results[indices[0]] = error
                else:
                    logger.warning("a batch of %d requests failed (%s); decoding them one by one", len(indices), error)
                    for index in indices:
                        results[index] = self.transcribe_batch([requests[index]])[0]
        return results  # type: ignore[return-value]

    def group_key(self, request: Request) -> tuple:
        return options_key(request)

    def group_options(self, key: tuple) -> dict[str, Any]:
        """Engine-specific keywords for ``decode`` from a group's key (speculative decoding)."""
        return {}

    # --- the pipeline ------------------------------------------------------------------------------

    def decode(self, requests: list[Request], *, assisted: bool = False, strategy: str | None = None) -> list[Transcript | Exception]:
        """Transcripts of requests that share decoding options, their windows decoded in batches."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        config = requests[0].config
        want_words = shaping.wants_words(config, requests[0].want_words)
        # Segment timestamps come from timestamp tokens; without them each speech window is one segment.
        with_timestamps = want_words or config.timestamps is not Timestamps.none
        speech, rows = [], []
        for r, request in enumerate(requests):
            clips, chunks, metadata = speech_chunks(request.samples, config.chunk_length_s)
            speech.append(clips)
            # Trimmed windows only for audio whose speech fits one window (measured: on long audio
            # they cost WER, 0.110 -> 0.116 on the dev sonnets, for little speed), and for seek-on
            # remainders, which are shorter than a window by construction (below).
            rows += [_Row(r, meta["offset"], meta["duration"], *self.log_mel(chunk), full_window=len(chunks) > 1) for chunk, meta in zip(chunks, metadata)]
        languages: list[str | None] = [request.config.language if self.multilingual else "en" for request in requests]
        hf_tokenizer = self.hf_tokenizer()
        previous = hf_tokenizer.encode(" " + config.prompt.strip(), add_special_tokens=False).ids if config.prompt else []
        beam_size = 1 if assisted or config.temperature > 0 else (config.num_beams or 1)
        windows: list[list[tuple[float, _Window]]] = [[] for _ in requests]
        last_speech = [0.0 for _ in requests]
        batch_size = 1 if assisted else max(1, min(config.batch_size, self.max_batch_size or config.batch_size))
        # Streaming: the first batch is a single window, so the first text is out after one window's
        # decode instead of after the whole batch; the rest still decode batched.
        first_batch = 1 if any(request.on_segments for request in requests) else batch_size
        delivered = [0 for _ in requests]
        while rows:
            rows = [row for row in rows if not is_cancelled(requests[row.request])]
            if not rows:
                break
            # Rows decode together only in windows of the same size, so a result never depends on
            # which other requests shared the batch.
            widths = [self._window_frames(row, with_timestamps, requests[row.request].config) for row in rows]
            batch, rest = [], []
            for row, row_width in zip(rows, widths):
                (batch if row_width == widths[0] and len(batch) < first_batch else rest).append(row)
            first_batch = batch_size
            width, rows = widths[0], rest
            features = np.stack([_pad_or_trim(row.features, width) for row in batch])
            encoded = self.encode(features)
            # A request's language is its first speech window's (rows keep each request's windows in order).
            undecided = {row.request: i for i, row in reversed(list(enumerate(batch))) if languages[row.request] is None}
            for r, language in zip(undecided, self.detect_language(encoded, list(undecided.values())) if undecided else []):
                languages[r] = language
            tokenizers = [Tokenizer(hf_tokenizer, self.multilingual, task=config.task.value, language=languages[row.request]) for row in batch]
            suppress = tuple(get_suppressed_tokens(tokenizers[0], [-1]))
            prompts = [_prompt(tokenizer, previous, with_timestamps) for tokenizer in tokenizers]
            decoded = self._decode_with_fallback(encoded, batch, prompts, tokenizers, beam_size, config.temperature, suppress, with_timestamps, assisted)
            sizes, kept, remainders, retries = [], [], [], []
            for index, (row, window, tokenizer) in enumerate(zip(batch, decoded, tokenizers)):
                size = min(int(np.ceil(row.duration) * FRAMES_PER_SECOND), row.frames)
                sizes.append(size)
                if window is None:  # judged silent
                    continue
                tokens = window.hypothesis.tokens
                if with_timestamps:
                    parts, seek = self.steps.split_segments(tokenizer, tokens, time_offset=row.offset, segment_size=size, segment_duration=row.duration)
                    if width < N_FRAMES and not _covers(parts, seek, row, window.compression_ratio):
                        # A trimmed window lost speech or looped: decode it again in a full window.
                        retries.append(row._replace(full_window=True))
                        continue
                    # Whisper often stops at a timestamp before the window's end, expecting the next
                    # window to go on from there (openai-whisper's seek loop): decode that rest too,
                    # unless it is under a second (too short to hold a word; decoding it loops).
                    if 0 < seek and size - seek > FRAMES_PER_SECOND:
                        remainders.append(row._replace(offset=row.offset + seek / FRAMES_PER_SECOND, duration=row.duration - seek / FRAMES_PER_SECOND, features=row.features[:, seek:], frames=row.frames - seek, full_window=False))
                else:
                    parts = [{"tokens": tokens, "start": row.offset, "end": row.offset + row.duration}]
                parts = [dict(part, text=tokenizer.decode(part["tokens"]), seek=int(row.offset * FRAMES_PER_SECOND)) for part in parts if part["tokens"]]
                if parts:
                    kept.append(index)
                    decoded[index] = window._replace(parts=parts)
            if want_words and kept:
                self._add_words(encoded, batch, decoded, kept, tokenizers, sizes, last_speech)
            for index in kept:
                windows[batch[index].request].append((batch[index].offset, decoded[index]))
            rows = retries + remainders + rows
            for r, request in enumerate(requests):
                if request.on_segments:
                    # Final: the segments before the earliest window of this request still to decode.
                    frontier = min((row.offset for row in rows if row.request == r), default=float("inf"))
                    ready = [item for item in windows[r] if item[0] < frontier]
                    chunks = self._transcript(request, ready, speech[r], languages[r], want_words, strategy).chunks
                    if len(chunks) > delivered[r]:
                        request.on_segments(chunks[delivered[r]:])
                        delivered[r] = len(chunks)

        transcripts: list[Transcript | Exception] = []
        for r, request in enumerate(requests):
            if is_cancelled(request):
                transcripts.append(cancelled_error())
                continue
            transcript = self._transcript(request, windows[r], speech[r], languages[r], want_words, strategy)
            if request.on_segments and transcript.chunks[delivered[r]:]:
                request.on_segments(transcript.chunks[delivered[r]:])
            transcripts.append(transcript)
        return transcripts

    def _decode_with_fallback(self, encoded, batch: list[_Row], prompts, tokenizers, beam_size: int, temperature: float, suppress, with_timestamps: bool, assisted: bool) -> list[_Window | None]:
        """openai-whisper's decode_with_fallback over a batch: windows whose text repeats itself,
        whose log-probability is low or that ran out of tokens are decoded again at the next
        temperature (those rows only); a window likely silent is skipped (None). A request's own
        ``temperature > 0`` samples once, as openai's API does."""
        temperatures = FALLBACK_TEMPERATURES if temperature == 0 else (temperature,)
        attempts: list[list[_Window]] = [[] for _ in batch]
        pending = list(range(len(batch)))
        sot_index = prompts[0].index(tokenizers[0].sot)
        for step, t in enumerate(temperatures):
            if not pending:
                break
            options = GenerateOptions(
                beam_size=beam_size if t == 0 else 1,
                temperature=t,
                max_new_tokens=min(MAX_DECODER_TOKENS - len(prompts[0]), max(token_budget(batch[i].duration) for i in pending)),
                suppress_tokens=suppress,
                with_timestamps=with_timestamps,
                assisted=assisted and t == 0,
            )
            subset = encoded if len(pending) == len(batch) else self.select(encoded, pending)
            hypotheses = self.generate(subset, [prompts[i] for i in pending], options, sot_index)
            still = []
            for i, hypothesis in zip(pending, hypotheses):
                tokens = hypothesis.tokens
                if len(tokens) > token_budget(batch[i].duration):  # ran on past this window's budget
                    hypothesis = hypothesis._replace(tokens=tokens[: token_budget(batch[i].duration)], finished=False)
                text = tokenizers[i].decode([token for token in hypothesis.tokens if token < tokenizers[i].eot])
                window = _Window([], hypothesis, compression_ratio(text), t)
                attempts[i].append(window)
                if hypothesis.no_speech_prob > NO_SPEECH_THRESHOLD and hypothesis.avg_logprob < LOGPROB_THRESHOLD:
                    attempts[i] = []  # silence: no text, and no point in sampling more
                    continue
                if not hypothesis.finished or window.compression_ratio > COMPRESSION_RATIO_THRESHOLD or hypothesis.avg_logprob < LOGPROB_THRESHOLD:
                    still.append(i)
            pending = still
        return [_best(windows) for windows in attempts]

    def log_mel(self, chunk: np.ndarray) -> tuple[np.ndarray, int]:
        """A chunk's log-Mel features as Whisper was trained on them, and how many frames hold audio.

        Whisper's windows are the log-Mel of audio padded with silence (openai-whisper pads the
        audio, then takes the spectrogram), so the padding is the spectrogram of silence at the
        chunk's own level floor, and the last frames of speech see the silence after them. Features
        padded with zeros instead look like faint noise to the model: at fp32, greedy decoding of
        the JFK clip then lost its commas and full stop. A second of silence is enough for the STFT
        window to leave the audio; its last frame (pure silence) pads the rest (``_pad_or_trim``)."""
        frames = len(chunk) // HOP_LENGTH
        features = self.feature_extractor(chunk, padding=TARGET_SAMPLING_RATE)[..., : frames + FRAMES_PER_SECOND]
        return features, frames

    def _add_words(self, encoded, batch: list[_Row], decoded: list, kept: list[int], tokenizers, sizes: list[int], last_speech: list[float]) -> None:
        """Word timings by cross-attention alignment, one request at a time so each keeps its own
        "last speech" state (results then do not depend on the batch's company)."""
        for r in dict.fromkeys(batch[i].request for i in kept):
            mine = [i for i in kept if batch[i].request == r]
            subset = encoded if len(mine) == len(batch) else self.select(encoded, mine)
            last_speech[r] = self.steps.add_word_timestamps([decoded[i].parts for i in mine], tokenizers[mine[0]], subset, [sizes[i] for i in mine], last_speech[r])

    def _window_frames(self, row: _Row, with_timestamps: bool, config: InferenceConfig) -> int:
        """Encoder frames for a window: Whisper's full 30 s, or with ``trim_encoder_window`` (engines
        whose encoder accepts it) for short audio the chunk + at least 5 s, in 5 s steps from 10 s,
        which cuts the encoder's work and the decoder's cross-attention. Whisper was trained on full
        windows only: trimmed ones are used where timestamps let the result be checked, and redone
        in full when it fails. A request's ``trim_encoder_window`` overrides the deployment's."""
        trim = self.trim_window if config.trim_encoder_window is None else config.trim_encoder_window
        if not (self.accepts_trimmed_windows and trim) or not with_timestamps or row.full_window:
            return N_FRAMES
        return min(N_FRAMES, max(TRIMMED_MIN_FRAMES, -(-(row.frames + TRIMMED_MARGIN_FRAMES) // TRIMMED_STEP_FRAMES) * TRIMMED_STEP_FRAMES))

    def _transcript(self, request: Request, windows: list[tuple[float, _Window]], clips: list[dict], language: str | None, want_words: bool, strategy: str | None) -> Transcript:
        """The request's windows, in time order, mapped from its speech-only timeline back to the audio."""
        from faster_whisper.transcribe import Segment, Word as FWWord, restore_speech_timestamps

        ordered = sorted(windows, key=lambda item: item[0])
        segments = [
            Segment(id=0, seek=part["seek"], start=part["start"], end=part["end"], text=part["text"], tokens=part["tokens"],
                    avg_logprob=window.hypothesis.avg_logprob, compression_ratio=window.compression_ratio, no_speech_prob=window.hypothesis.no_speech_prob, temperature=window.temperature,
                    words=[FWWord(**w) for w in part.get("words", [])] if want_words else None)
            for _, window in ordered for part in window.parts
        ]
        restored = list(restore_speech_timestamps(segments, clips, TARGET_SAMPLING_RATE)) if clips and segments else []
        raw = [
            shaping.RawSegment(text=s.text, start=s.start, end=s.end, avg_logprob=s.avg_logprob, compression_ratio=s.compression_ratio, no_speech_prob=s.no_speech_prob, temperature=s.temperature,
                               words=[shaping.RawWord(w.word, w.start, w.end) for w in s.words or []])
            for s in restored
        ]
        return shaping.transcript(raw, config=request.config, want_words=want_words, duration=len(request.samples) / TARGET_SAMPLING_RATE, language=language or request.config.language, strategy=strategy or self.strategy)


def speech_chunks(samples: np.ndarray, chunk_length_s: float) -> tuple[list[dict], list[np.ndarray], list[dict]]:
    """The speech regions of the audio (Silero VAD, as faster-whisper's batched pipeline cuts them)
    and the windows' audio: regions joined up to ``chunk_length_s``, with their offsets."""
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    clips = get_speech_timestamps(samples, VadOptions(max_speech_duration_s=chunk_length_s, min_silence_duration_ms=160))
    if not clips:
        return [], [], []
    chunks, metadata = collect_chunks(samples, clips, max_duration=chunk_length_s)
    return clips, chunks, metadata


def _best(windows: list[_Window]) -> _Window | None:
    """The first decoding that passed the checks, else (every temperature failed) the most likely
    one among those that do not repeat themselves, as faster-whisper keeps it."""
    if not windows:
        return None
    last = windows[-1]
    passed = last.hypothesis.finished and last.compression_ratio <= COMPRESSION_RATIO_THRESHOLD and last.hypothesis.avg_logprob >= LOGPROB_THRESHOLD
    if passed:
        return last
    candidates = [w for w in windows if w.compression_ratio <= COMPRESSION_RATIO_THRESHOLD] or windows
    return max(candidates, key=lambda w: w.hypothesis.avg_logprob)


def _prompt(tokenizer, previous: list[int], with_timestamps: bool) -> list[int]:
    """openai-whisper's decoder prompt: earlier text (the request's ``prompt``), the start of
    transcript with language and task, and no-timestamps when timestamps are not wanted."""
    prompt = [tokenizer.sot_prev, *previous[-(MAX_DECODER_TOKENS // 2 - 1):]] if previous else []
    prompt += list(tokenizer.sot_sequence)
    if not with_timestamps:
        prompt.append(tokenizer.no_timestamps)
    return prompt


def _pad_or_trim(features: np.ndarray, frames: int) -> np.ndarray:
    """A window of ``frames``: features from ``log_mel`` end in frames of pure silence, repeated as needed."""
    if features.shape[-1] >= frames:
        return features[..., :frames]
    return np.pad(features, [(0, 0)] * (features.ndim - 1) + [(0, frames - features.shape[-1])], mode="edge")


def _covers(parts: list[dict], seek: int, row: _Row, ratio: float) -> bool:
    """Whether a trimmed window's segments plausibly transcribe its chunk: they reach to within
    1.5 s of the chunk's end (VAD chunks end in speech, plus 0.4 s padding) unless the model stopped
    early to go on in a next window, and the text does not loop (openai-whisper's compression test)."""
    if ratio > COMPRESSION_RATIO_THRESHOLD:
        return False
    reached = (parts[-1]["end"] - row.offset) if parts and parts[-1]["tokens"] else 0.0
    stopped_early = 0 < seek < row.frames - FRAMES_PER_SECOND
    return stopped_early or reached >= row.duration - 1.5
