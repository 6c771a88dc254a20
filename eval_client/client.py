"""HTTP client for ASR endpoints: three protocols, retries with backoff, honest failure outcomes.

Unlike lmms-eval's ``whisper_tt`` client, a request that finally fails is returned as a failed
``RequestOutcome`` (error kind, message, every attempt) — never as an empty transcript.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

import httpx
import numpy as np
import soundfile
from pydantic import BaseModel, Field, model_validator

from eval_client.live import LiveTurn, stream_live

Protocol = Literal["hf", "openai", "tt", "realtime"]
WavEncoding = Literal["float32", "int16"]
# Why a request attempt failed; the retryable kinds are the transient ones.
ErrorKind = Literal["timeout", "connection", "http_429", "http_5xx", "http_4xx", "bad_response"]
RETRYABLE: frozenset[str] = frozenset({"timeout", "connection", "http_429", "http_5xx"})
DEFAULT_BASE_URL = "http://127.0.0.1:8000"


def encode_wav(array: np.ndarray, sr: int, encoding: WavEncoding = "float32") -> bytes:
    """Samples → WAV file bytes: 32-bit float IEEE (what lmms-eval sends) or 16-bit PCM (half the size)."""
    buffer = io.BytesIO()
    samples = np.asarray(array, dtype=np.float32)
    if encoding == "int16":
        samples = np.clip(samples, -1.0, 1.0)  # out-of-range floats would wrap around in 16-bit PCM
    soundfile.write(buffer, samples, sr, format="WAV", subtype="FLOAT" if encoding == "float32" else "PCM_16")
    return buffer.getvalue()


def encode_audio_to_base64_wav(array: np.ndarray, sr: int, encoding: WavEncoding = "float32") -> str:
    return base64.b64encode(encode_wav(array, sr, encoding)).decode("ascii")


class SpeakerSegment(BaseModel):
    speaker: str
    start: float
    end: float


class Attempt(BaseModel):
    """One try of a request: what came back and how long we waited before it."""

    status: int | None = None
    error_kind: ErrorKind | None = None
    error: str | None = None
    latency_s: float
    first_text_s: float | None = Field(None, description="Streamed requests: seconds until the first text arrived.")
    waited_before_s: float = 0.0


class RequestOutcome(BaseModel):
    """The result of one transcription request after all its retries."""

    ok: bool
    text: str | None = None  # None when the request failed, "" only when the server said so
    speakers: list[SpeakerSegment] = Field(default_factory=list)
    error_kind: ErrorKind | None = None
    error: str | None = None
    attempts: list[Attempt]
    latency_s: float | None = Field(None, description="Duration of the successful attempt.")
    first_text_s: float | None = Field(None, description="Streamed requests: time to the first text of the successful attempt.")
    elapsed_s: float = Field(description="Wall time including retries and backoff.")
    turns: list[LiveTurn] = Field(default_factory=list, description="Live sessions (protocol realtime): each turn's text and timings.")


class BadResponse(ValueError):
    """A 2xx answer we cannot read a transcript from."""


def parse_transcription(body: Any) -> tuple[str, list[SpeakerSegment]]:
    """Text and speaker turns from any of the response shapes we meet.

    ``text`` / ``transcription`` / ``result`` (lmms-eval's order), a plain string (OpenAI
    ``response_format=text``), our diarized ``speakers`` with ``timestamp``, and tt-media-server
    ``segments`` with ``speaker``/``start_time``/``end_time``. Anything else is a BadResponse.
    """
    if isinstance(body, str):
        return body, []
    if not isinstance(body, dict):
        raise BadResponse(f"expected a JSON object, got {type(body).__name__}")
    speakers = _speaker_segments(body)
    for key in ("text", "transcription", "result"):
        if isinstance(body.get(key), str):  # presence, not truthiness: "" is a valid transcript of silence
            return body[key], speakers
    if isinstance(body.get("speakers"), list) and body["speakers"]:
        return " ".join(str(turn.get("text", "")).strip() for turn in body["speakers"]), speakers
    raise BadResponse(f"no transcript in response keys {sorted(body)[:10]}")


def _speaker_segments(body: dict) -> list[SpeakerSegment]:
    segments = []
    for turn in body.get("speakers") or []:
        if isinstance(turn, dict) and "speaker" in turn and turn.get("timestamp"):
            start, end = turn["timestamp"][0], turn["timestamp"][1]
            if start is not None and end is not None:
                segments.append(SpeakerSegment(speaker=str(turn["speaker"]), start=start, end=end))
    if segments:  # our diarized turns; tt-style segments (often also present) would count every turn twice
        return segments
    for seg in body.get("segments") or []:
        if isinstance(seg, dict) and seg.get("speaker") is not None:
            start, end = seg.get("start_time", seg.get("start")), seg.get("end_time", seg.get("end"))
            if start is not None and end is not None:
                segments.append(SpeakerSegment(speaker=str(seg["speaker"]), start=float(start), end=float(end)))
    return segments


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class ClientConfig(BaseModel):
    base_url: str = Field(default_factory=lambda: os.environ.get("OPENAI_API_BASE") or DEFAULT_BASE_URL)
    # Never a default secret: only what the caller or the environment provides.
    api_key: str | None = Field(default_factory=lambda: os.environ.get("OPENAI_API_KEY") or os.environ.get("HF_TOKEN") or None, repr=False)
    protocol: Protocol = "hf"
    timeout_s: float = 300.0
    max_retries: int = Field(3, ge=0)
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 120.0  # keeps a hostile Retry-After from stalling a run for hours
    concurrency: int = Field(4, ge=1)
    wav_encoding: WavEncoding = "float32"
    language: str | None = None
    model: str = "whisper-1"  # the OpenAI protocol's required form field
    parameters: dict[str, Any] = Field(default_factory=dict, description="Extra request parameters, sent per protocol.")
    stream: bool = Field(False, description="Ask for a streamed answer (openai: SSE, tt: NDJSON) and time the first text.")
    pace: float = Field(1.0, ge=0, description="realtime: audio seconds streamed per wall-clock second (1: real time; 0: as fast as the server reads).")
    live_tail_s: float = Field(1.0, ge=0, description="realtime: seconds of silence streamed after the audio, as a microphone would go on.")

    @model_validator(mode="after")
    def _streamable(self) -> "ClientConfig":
        if self.stream and self.protocol == "hf":
            raise ValueError("stream: the HF contract has no streamed answer; use protocol openai or tt")
        return self


class ASRClient:
    """Transcribes audio arrays against one endpoint; ``transcribe_many`` runs them concurrently."""

    def __init__(self, config: ClientConfig | None = None, **overrides: Any):
        self.config = (config or ClientConfig()).model_copy(update=overrides)

    def transcribe_audio(self, array: np.ndarray, sr: int) -> RequestOutcome:
        """Synchronous single request, with the same retries as the async path."""
        return asyncio.run(self._transcribe_once(array, sr))

    async def _transcribe_once(self, array: np.ndarray, sr: int) -> RequestOutcome:
        async with self.http_client() as http:
            return await self.atranscribe(http, array, sr)

    def http_client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=self.config.concurrency)
        return httpx.AsyncClient(timeout=self.config.timeout_s, limits=limits, headers=self._headers())

    async def transcribe_many(self, arrays: Sequence[tuple[np.ndarray, int]]) -> list[RequestOutcome]:
        """All ``(array, sr)`` pairs, at most ``concurrency`` in flight; outcomes in input order."""
        outcomes: list[RequestOutcome | None] = [None] * len(arrays)
        async for index, outcome in self.stream(len(arrays), lambda i: _ready(arrays[i])):
            outcomes[index] = outcome
        return outcomes  # type: ignore[return-value]

    async def stream(self, count: int, load: Callable[[int], Awaitable[tuple[np.ndarray, int]]]) -> AsyncIterator[tuple[int, RequestOutcome]]:
        """Yield ``(index, outcome)`` as requests finish; ``load(i)`` is awaited only when a slot is free,
        so at most ``concurrency`` audios are in memory at once."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(count):
            queue.put_nowait(index)
        done: asyncio.Queue[tuple[int, RequestOutcome | Exception]] = asyncio.Queue()

        async def worker(http: httpx.AsyncClient) -> None:
            while not queue.empty():
                index = queue.get_nowait()
                try:
                    array, sr = await load(index)
                    await done.put((index, await self.atranscribe(http, array, sr)))
                except Exception as error:  # e.g. an unreadable audio file: stop the run, don't hang it
                    await done.put((index, error))

        async with self.http_client() as http:
            workers = [asyncio.create_task(worker(http)) for _ in range(min(self.config.concurrency, count))]
            try:
                for _ in range(count):
                    index, result = await done.get()
                    if isinstance(result, Exception):
                        raise result
                    yield index, result
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)

    async def atranscribe(self, http: httpx.AsyncClient, array: np.ndarray, sr: int) -> RequestOutcome:
        """One transcription with retries on timeouts, connection errors, 429 and 5xx; none on 4xx."""
        if self.config.protocol == "realtime":
            return await self.alive(array, sr)
        wav = encode_wav(array, sr, self.config.wav_encoding)
        attempts: list[Attempt] = []
        started = time.perf_counter()
        wait = 0.0
        for attempt_number in range(self.config.max_retries + 1):
            if wait:
                await asyncio.sleep(wait)
            attempt, parsed, retry_after = await self._attempt(http, wav)
            attempt.waited_before_s = wait
            attempts.append(attempt)
            if parsed is not None:
                text, speakers = parsed
                return RequestOutcome(ok=True, text=text, speakers=speakers, attempts=attempts, latency_s=attempt.latency_s, first_text_s=attempt.first_text_s, elapsed_s=time.perf_counter() - started)
            if attempt.error_kind not in RETRYABLE:
                break
            wait = self.backoff(attempt_number, retry_after)
        last = attempts[-1]
        return RequestOutcome(ok=False, error_kind=last.error_kind, error=last.error, attempts=attempts, elapsed_s=time.perf_counter() - started)

    async def alive(self, array: np.ndarray, sr: int) -> RequestOutcome:
        """One live session (not retried: it would stream the audio again in real time)."""
        transcription = {**({"language": self.config.language} if self.config.language else {}), **self.config.parameters}
        session = {"audio": {"input": {"transcription": transcription}}} if transcription else None
        started = time.perf_counter()
        try:
            result = await stream_live(self.config.base_url, self.config.api_key, array, sr, pace=self.config.pace, tail_s=self.config.live_tail_s, session=session, timeout_s=self.config.timeout_s)
        except (OSError, ConnectionError) as error:  # refused connection or session
            elapsed = time.perf_counter() - started
            attempt = Attempt(error_kind="connection", error=f"{type(error).__name__}: {error}"[:300], latency_s=elapsed)
            return RequestOutcome(ok=False, error_kind="connection", error=attempt.error, attempts=[attempt], elapsed_s=elapsed)
        elapsed = time.perf_counter() - started
        failed = [t for t in result.turns if t.text is None]
        if failed or result.errors:
            problem = "; ".join([*(f"turn {t.item_id}: {t.error or 'no final text'}" for t in failed), *result.errors])[:300]
            attempt = Attempt(error_kind="bad_response", error=problem, latency_s=elapsed)
            return RequestOutcome(ok=False, error_kind="bad_response", error=problem, attempts=[attempt], elapsed_s=elapsed, turns=result.turns)
        speakers = [SpeakerSegment(speaker=speaker, start=start, end=end) for speaker, start, end in result.segments]
        firsts = [t.first_delta_s for t in result.turns if t.first_delta_s is not None]
        attempt = Attempt(latency_s=elapsed, first_text_s=min(firsts) if firsts else None)
        return RequestOutcome(ok=True, text=result.text, speakers=speakers, attempts=[attempt], latency_s=elapsed, first_text_s=attempt.first_text_s, elapsed_s=elapsed, turns=result.turns)

    def backoff(self, attempt_number: int, retry_after: float | None) -> float:
        """Seconds before the next try: the server's Retry-After when it gave one, else exponential
        backoff with equal jitter (half fixed, half random) so concurrent clients spread out."""
        if retry_after is not None:
            return min(retry_after, self.config.max_retry_after_s)
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempt_number)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _attempt(self, http: httpx.AsyncClient, wav: bytes) -> tuple[Attempt, tuple[str, list[SpeakerSegment]] | None, float | None]:
        url, request_kwargs = self._request(wav)
        start = time.perf_counter()
        if self.config.stream:
            return await self._streamed_attempt(http, url, request_kwargs, start)
        try:
            response = await http.post(url, **request_kwargs)
        except httpx.TimeoutException as error:
            return Attempt(error_kind="timeout", error=f"{type(error).__name__}: {error}", latency_s=time.perf_counter() - start), None, None
        except httpx.TransportError as error:  # refused, reset, closed mid-response, protocol garbage
            return Attempt(error_kind="connection", error=f"{type(error).__name__}: {error}", latency_s=time.perf_counter() - start), None, None
        latency = time.perf_counter() - start
        status = response.status_code
        if status >= 400:
            kind: ErrorKind = "http_429" if status == 429 else "http_5xx" if status >= 500 else "http_4xx"
            return Attempt(status=status, error_kind=kind, error=f"HTTP {status}: {response.text[:300]}", latency_s=latency), None, retry_after_seconds(response.headers.get("retry-after"))
        try:
            parsed = parse_transcription(_body(response))
        except BadResponse as error:
            return Attempt(status=status, error_kind="bad_response", error=str(error), latency_s=latency), None, None
        return Attempt(status=status, latency_s=latency), parsed, None

    async def _streamed_attempt(self, http: httpx.AsyncClient, url: str, request_kwargs: dict[str, Any], start: float) -> tuple[Attempt, tuple[str, list[SpeakerSegment]] | None, float | None]:
        """One streamed try: the text is the stream's final event (SSE ``transcript.text.done``,
        the NDJSON line with ``final``); ``first_text_s`` is when the first non-empty text came."""
        first_text: float | None = None
        try:
            async with http.stream("POST", url, **request_kwargs) as response:
                if response.status_code >= 400:
                    await response.aread()
                    status = response.status_code
                    kind: ErrorKind = "http_429" if status == 429 else "http_5xx" if status >= 500 else "http_4xx"
                    return Attempt(status=status, error_kind=kind, error=f"HTTP {status}: {response.text[:300]}", latency_s=time.perf_counter() - start), None, retry_after_seconds(response.headers.get("retry-after"))
                events = StreamEvents()
                async for line in response.aiter_lines():
                    if events.feed(line) and first_text is None:
                        first_text = time.perf_counter() - start
                status = response.status_code
        except httpx.TimeoutException as error:
            return Attempt(error_kind="timeout", error=f"{type(error).__name__}: {error}", latency_s=time.perf_counter() - start), None, None
        except httpx.TransportError as error:
            return Attempt(error_kind="connection", error=f"{type(error).__name__}: {error}", latency_s=time.perf_counter() - start), None, None
        latency = time.perf_counter() - start
        if events.error is not None:  # the server failed after the stream began
            code = events.error.get("code")
            kind = "http_5xx" if not isinstance(code, int) or code >= 500 else "http_4xx"
            return Attempt(status=status, error_kind=kind, error=f"error in stream: {str(events.error.get('message'))[:300]}", latency_s=latency, first_text_s=first_text), None, None
        if events.final is None:
            return Attempt(status=status, error_kind="bad_response", error="the stream ended without its final event", latency_s=latency, first_text_s=first_text), None, None
        try:
            text, speakers = parse_transcription(events.final)
        except BadResponse as error:
            return Attempt(status=status, error_kind="bad_response", error=str(error), latency_s=latency, first_text_s=first_text), None, None
        return Attempt(status=status, latency_s=latency, first_text_s=first_text), (text, speakers or events.speakers), None

    def _request(self, wav: bytes) -> tuple[str, dict[str, Any]]:
        base = self.config.base_url.rstrip("/")
        params = self.config.parameters
        if self.config.protocol == "hf":
            parameters = {**({"language": self.config.language} if self.config.language else {}), **params}
            return base + "/", {"json": {"inputs": _b64(wav), "parameters": parameters}}
        if self.config.protocol == "tt":
            return base + "/audio/transcriptions", {"json": {"file": _b64(wav), "stream": self.config.stream, **params}}
        # OpenAI: a base that already ends in /v1 (as OPENAI_API_BASE usually does) gets no second /v1.
        url = base + ("/audio/transcriptions" if base.endswith("/v1") else "/v1/audio/transcriptions")
        data = {"model": self.config.model, "response_format": "json", **({"stream": "true"} if self.config.stream else {}), **{k: _form_value(v) for k, v in params.items()}}
        if self.config.language:
            data["language"] = self.config.language
        files = {"file": ("audio.wav", wav, "audio/wav")}
        return url, {"data": data, "files": files}

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers


class StreamEvents:
    """Reads a streamed transcription line by line: OpenAI's SSE (``data: {json}`` lines) or
    tt-media-server's NDJSON. Keeps the final event, speaker segments and any error."""

    def __init__(self) -> None:
        self.final: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.speakers: list[SpeakerSegment] = []

    def feed(self, line: str) -> bool:
        """One line; True when it carried new text."""
        line = line.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        if not line.startswith("{"):
            return False  # SSE blank lines, comments, event names
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return False
        if isinstance(event.get("error"), dict):
            self.error = event["error"]
            return False
        kind = event.get("type")
        if kind == "transcript.text.done" or event.get("final"):
            self.final = event
            return False
        if kind == "transcript.text.segment" and event.get("speaker"):
            self.speakers.append(SpeakerSegment(speaker=str(event["speaker"]), start=float(event["start"]), end=float(event["end"])))
            return False
        return bool(event.get("delta") or (kind is None and event.get("text")))


def _body(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").startswith("text/plain"):
        return response.text
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadResponse(f"invalid JSON ({error}): {response.text[:100]!r}") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _form_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


async def _ready(pair: tuple[np.ndarray, int]) -> tuple[np.ndarray, int]:
    return pair
