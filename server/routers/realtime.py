"""Live transcription: OpenAI's Realtime transcription sessions on ``/v1/realtime?intent=transcription``
(WebSocket; events in ``server.realtime_protocol``).

Audio arrives in ``input_audio_buffer.append`` events, is resampled to 16 kHz and run through
Silero VAD frame by frame (``diarization.speech_detection.SpeechFrames``, ``TurnDetector``: ``server_vad``). A turn ends
when speech stops (or on ``input_audio_buffer.commit``) and is decoded like a file request: admitted
by ``server.admission``, on the inference queue, in the same micro-batches as file requests. While
someone speaks, the turn so far is decoded again now and then (when the engine is idle) and the words
two decodings agree on are sent as deltas (LocalAgreement-2). With a diarization model loaded, each
turn gets a session-wide speaker (``diarization.speaker_identification.SessionSpeakers``).

Bounded: a session holds its current turn (at most ``REALTIME_MAX_TURN_S``) and at most
``MAX_PENDING_TURNS`` committed turns waiting for the engine (then it stops reading its socket until
one is done); ``REALTIME_MAX_SESSIONS`` sessions at once; ``REALTIME_IDLE_TIMEOUT_S``; all of it is
dropped when the client leaves.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from audio import TARGET_SAMPLING_RATE, RawAudioStream, buffer_bytes
from errors import EndpointError, InferenceError, InvalidSpeakerReference
from schemas import SpeakerSegment, TranscriptionResponse
from server.dependencies import ServerState, key_matches
from server.realtime_protocol import (MAX_APPEND_BASE64_CHARS, MIN_COMMIT_MS, LiveConfig, ProtocolError, apply_update, endpoint_error_fields, error_event, event,
                                      new_id)
from diarization.speaker_identification import SessionSpeakers
from diarization.speech_detection import FRAME, SpeechFrames, TurnDetector

logger = logging.getLogger("uvicorn.error")
router = APIRouter()

KEY_SUBPROTOCOL = "openai-insecure-api-key."
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
# Committed turns a session may have waiting for the engine; beyond, its socket is not read until
# one is done (a client sending faster than real time is slowed, not buffered).
MAX_PENDING_TURNS = 2
# Partial text needs this much of a turn: shorter audio gives Whisper too little to go on.
MIN_PARTIAL_S = 1.0
ROUTE = "/v1/realtime"


@router.websocket(ROUTE)
async def realtime(websocket: WebSocket) -> None:
    await LiveSession(websocket, websocket.app.state.server).run()


@dataclass
class Item:
    """One turn's conversation item and the partial text sent for it."""

    item_id: str
    sent_words: list[str] = field(default_factory=list)
    last_words: list[str] = field(default_factory=list)  # the latest partial decoding
    done: bool = False

    @property
    def sent(self) -> str:
        return " ".join(self.sent_words)


@dataclass
class Turn:
    item: Item
    previous_item_id: str | None
    samples: np.ndarray
    start_ms: int
    end_ms: int


class TurnAudio:
    """The audio a session holds: from the current turn's start (less the prefix padding), or
    between turns the last prefix padding's worth; preallocated, so it never grows past
    ``capacity`` samples. Positions are absolute sample indices of the session's 16 kHz stream."""

    def __init__(self, capacity: int):
        self.data = np.zeros(capacity, dtype=np.float32)
        self.start = 0  # stream position of data[0]
        self.size = 0

    @property
    def end(self) -> int:
        return self.start + self.size

    def append(self, samples: np.ndarray) -> None:
        if self.size + len(samples) > len(self.data):  # the caller commits before this; a safety net
            self.drop_before(self.end + len(samples) - len(self.data))
        self.data[self.size : self.size + len(samples)] = samples
        self.size += len(samples)

    def drop_before(self, position: int) -> None:
        cut = min(max(0, position - self.start), self.size)
        if cut:
            self.data[: self.size - cut] = self.data[cut : self.size]
            self.start += cut
            self.size -= cut

    def take(self, position: int) -> np.ndarray:
        """A copy of the audio up to ``position``, dropped from the buffer."""
        cut = min(max(0, position - self.start), self.size)
        taken = self.data[:cut].copy()
        self.drop_before(position)
        return taken

    def clear(self) -> None:
        self.start, self.size = self.end, 0


class LiveSession:
    def __init__(self, websocket: WebSocket, state: ServerState):
        self.ws, self.state, self.settings = websocket, state, state.settings
        self.session_id = new_id("sess")
        self.config = LiveConfig()
        self.beta = False
        self.handler: Any = None
        self.stream = RawAudioStream(self.config.input_format)
        self.frames = SpeechFrames()
        self.frames_fed = 0
        self.detector = self._detector()
        self.max_turn = round(self.settings.realtime_max_turn_s * TARGET_SAMPLING_RATE)
        # A turn, its prefix padding (at most 5 s) and one piece of audio (``_ingest``) beyond its limit.
        self.audio = TurnAudio(self.max_turn + 7 * TARGET_SAMPLING_RATE)
        self.item: Item | None = None  # the turn being spoken (or, without VAD, buffered)
        self.turn_start = 0
        self.previous_item_id: str | None = None
        self.turns: asyncio.Queue[Turn] = asyncio.Queue(MAX_PENDING_TURNS)
        self.transcribing = False  # a turn taken from ``turns`` is being decoded
        self.partial: asyncio.Task | None = None
        self.partial_at = 0  # stream position of the last partial decoding
        self.speakers: SessionSpeakers | None = None
        self.closed = False
        self._send_lock = asyncio.Lock()
        # Held while an append's audio is taken in (off the loop): a partial decoding that ends
        # meanwhile must not read the buffer half-written.
        self._audio_lock = threading.Lock()

    # --- the connection ---------------------------------------------------------------------

    async def run(self) -> None:
        offered = list(self.ws.scope.get("subprotocols") or [])
        key = next((p[len(KEY_SUBPROTOCOL) :] for p in offered if p.startswith(KEY_SUBPROTOCOL)), None)
        scheme, _, token = self.ws.headers.get("authorization", "").partition(" ")
        if key is None and scheme.lower() == "bearer":
            key = token.strip()
        self.beta = "realtime=v1" in self.ws.headers.get("openai-beta", "") or BETA_SUBPROTOCOL in offered
        # A browser fails the handshake unless one offered subprotocol is chosen; never the key.
        chosen = "realtime" if "realtime" in offered else next((p for p in offered if not p.startswith(KEY_SUBPROTOCOL)), None)
        await self.ws.accept(subprotocol=chosen)
        refusal = self._refusal(key)
        if refusal is not None:
            message, code, close_code = refusal
            self.state.metrics.errors.labels(code).inc()
            await self._send(error_event(message, code=code, kind="invalid_request_error" if close_code == 1008 else "server_error"))
            await self.ws.close(close_code, message[:120])
            return
        self.state.live_sessions += 1
        worker = asyncio.create_task(self._transcribe_turns())
        try:
            self.speakers = self._session_speakers(self.config)
            kind = "transcription_session.created" if self.beta else "session.created"
            await self._send(event(kind, session=self._session_body()))
            await self._serve(worker)
        except WebSocketDisconnect:
            pass
        except Exception as error:  # a fault of ours: the client is told, not just dropped
            logger.exception("live session failed")
            await self._close(self.state.host.redact(f"the session failed: {type(error).__name__}: {error}"), "inference_error", 1011, "server_error")
        finally:
            self.closed = True
            self.state.live_sessions -= 1
            for task in (worker, self.partial):
                if task is not None and not task.done():
                    task.cancel()
            for task in (worker, self.partial):
                if task is not None:
                    with contextlib.suppress(BaseException):
                        await task

    def _refusal(self, key: str | None) -> tuple[str, str, int] | None:
        """Why this session cannot start: (message, code, close code), or None."""
        if not key_matches(self.settings, key):
            return "missing or wrong API key: send 'Authorization: Bearer <key>' or the subprotocol 'openai-insecure-api-key.<key>'", "invalid_api_key", 1008
        intent = self.ws.query_params.get("intent")
        if intent not in (None, "transcription"):
            return f"this server runs transcription sessions only: connect to {ROUTE}?intent=transcription (got intent={intent!r})", "invalid_intent", 1008
        if self.state.admission.draining:
            return "the server is shutting down; connect again (another replica will take the session)", "unavailable", 1012
        if self.state.live_sessions >= self.settings.realtime_max_sessions:
            return f"the server has {self.state.live_sessions} live sessions open, its limit (REALTIME_MAX_SESSIONS); try again later", "session_limit_reached", 1013
        try:
            self.handler = self.state.host.ready_handler()
        except EndpointError as error:
            return self.state.host.redact(str(error)), error.kind, 1013
        return None

    async def _serve(self, worker: asyncio.Task) -> None:
        shutdown = asyncio.ensure_future(self.state.admission.shutting_down.wait())
        try:
            receive: asyncio.Future | None = None
            while True:
                receive = receive or asyncio.ensure_future(self.ws.receive())
                done, _ = await asyncio.wait({receive, shutdown, worker}, timeout=self.settings.realtime_idle_timeout_s, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    if worker in done:  # cannot happen unless the worker failed: say so
                        receive.cancel()
                        worker.result()
                    if shutdown in done:
                        receive.cancel()
                        await self._close("the server is shutting down; connect again", "unavailable", 1012, "server_error")
                        return
                    if self.transcribing or not self.turns.empty():
                        continue  # a client waiting for its turns' texts is not idle
                    receive.cancel()
                    await self._close(f"no event for {self.settings.realtime_idle_timeout_s:g} s (REALTIME_IDLE_TIMEOUT_S); session closed", "session_idle_timeout", 1000)
                    return
                message, receive = receive.result(), None
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is None:
                    await self._send(error_event("events are JSON text messages; a binary message was sent", code="invalid_json"))
                    continue
                await self._handle(message["text"])
        finally:
            shutdown.cancel()

    async def _close(self, message: str, code: str, close_code: int, kind: str = "invalid_request_error") -> None:
        await self._send(error_event(message, code=code, kind=kind))
        await self.ws.close(close_code, message[:120])

    async def _send(self, body: dict[str, Any]) -> None:
        async with self._send_lock:
            if self.ws.application_state == WebSocketState.CONNECTED:
                await self.ws.send_text(json.dumps(body))

    def _session_body(self) -> dict[str, Any]:
        return self.config.beta_session(self.session_id) if self.beta else self.config.ga_session(self.session_id)

    # --- client events ------------------------------------------------------------------------

    async def _handle(self, text: str) -> None:
        event_id = None
        try:
            try:
                body = json.loads(text)
            except ValueError as error:
                raise ProtocolError(f"the message is not JSON ({error})", code="invalid_json") from None
            if not isinstance(body, dict) or not isinstance(body.get("type"), str):
                raise ProtocolError("an event is a JSON object with a string 'type'", param="type")
            event_id = body.get("event_id") if isinstance(body.get("event_id"), str) else None
            kind = body["type"]
            if kind in ("transcription_session.update", "session.update"):
                await self._update(kind, body.get("session"))
            elif kind == "input_audio_buffer.append":
                await self._append(body.get("audio"))
            elif kind == "input_audio_buffer.commit":
                await self._commit()
            elif kind == "input_audio_buffer.clear":
                self._clear()
                await self._send(event("input_audio_buffer.cleared"))
            else:
                raise ProtocolError(f"unknown event type {kind[:80]!r}; a transcription session takes transcription_session.update (or session.update), "
                                    "input_audio_buffer.append, input_audio_buffer.commit and input_audio_buffer.clear", param="type")
        except ProtocolError as error:
            self.state.metrics.errors.labels(error.code).inc()
            await self._send(error_event(str(error), kind=error.kind, code=error.code, param=error.param, event_id=event_id))
        except EndpointError as error:
            self.state.metrics.errors.labels(error.kind).inc()
            await self._send(error_event(self.state.host.redact(str(error)), event_id=event_id, **endpoint_error_fields(error)))

    async def _update(self, kind: str, session: Any) -> None:
        config = apply_update(self.config, kind, session)
        self.handler.check(config.inference_config(diarize=bool(config.diarize)))  # what this deployment cannot do, said now
        changed = (config.known_speaker_names, config.diarize) != (self.config.known_speaker_names, self.config.diarize)
        speakers = self._session_speakers(config) if changed else self.speakers
        if config.input_format != self.config.input_format:
            self.stream = RawAudioStream(config.input_format)
        vad_changed = config.turn_detection != self.config.turn_detection
        self.config, self.speakers = config, speakers
        if vad_changed:
            self.detector = self._detector()
        self.beta = kind == "transcription_session.update"
        await self._send(event("transcription_session.updated" if self.beta else "session.updated", session=self._session_body()))

    def _session_speakers(self, config: LiveConfig) -> SessionSpeakers | None:
        embedder = getattr(self.handler, "embedder", None)
        if embedder is None or config.diarize is False:
            if config.known_speaker_names:
                raise ProtocolError("known_speaker_names need speaker labels: a diarization model (DIARIZATION_MODEL) and diarize not false", code="model_not_configured", param="session")
            return None
        known = self.handler.voiceprints.get(config.known_speaker_names, embedder.model_id) if config.known_speaker_names else []
        return SessionSpeakers(self.handler.settings.speaker_match_threshold, known)

    def _detector(self) -> TurnDetector | None:
        vad = self.config.turn_detection
        if vad is None:
            return None
        detector = TurnDetector(vad.threshold, vad.silence_duration_ms)
        detector.frame = self.frames_fed  # frames count from the session's start, as stream positions do
        return detector

    async def _append(self, audio_b64: Any) -> None:
        if not isinstance(audio_b64, str):
            raise ProtocolError("input_audio_buffer.append needs 'audio': base64 of the audio in the session's input_audio_format", param="audio")
        if len(audio_b64) > MAX_APPEND_BASE64_CHARS:
            raise ProtocolError(f"input_audio_buffer.append: 'audio' holds more than 15 MiB; send smaller pieces", param="audio")
        try:
            data = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ProtocolError(f"input_audio_buffer.append: 'audio' is not valid base64 ({error})", param="audio") from None
        # Decoding, resampling and the VAD release the GIL: off the event loop.
        actions = await asyncio.to_thread(self._ingest, data)
        for action in actions:
            if isinstance(action, Turn):
                await self._queue(action)
            else:
                await self._send(action)
        self._maybe_partial()

    async def _queue(self, turn: Turn) -> None:
        await self._send(event("input_audio_buffer.committed", item_id=turn.item.item_id, previous_item_id=turn.previous_item_id))
        if self.partial is not None and not self.partial.done():
            self.partial.cancel()  # the final decoding goes first
        await self.turns.put(turn)  # waits while MAX_PENDING_TURNS are pending: backpressure

    def _ingest(self, data: bytes) -> list[Any]:
        """The audio of one append, second by second: buffered, run through the VAD; the events
        and turns it ends in."""
        samples = self.stream.decode(data)
        actions: list[Any] = []
        with self._audio_lock:
            for start in range(0, len(samples), TARGET_SAMPLING_RATE):
                actions += self._ingest_piece(samples[start : start + TARGET_SAMPLING_RATE])
        return actions

    def _ingest_piece(self, samples: np.ndarray) -> list[Any]:
        probabilities = self.frames.feed(samples)
        self.frames_fed += len(probabilities)
        self.audio.append(samples)
        actions: list[Any] = []
        if self.detector is None:
            if self.item is None and len(samples):
                self._start_item(self.audio.start)
        else:
            prefix = round(self.config.turn_detection.prefix_padding_ms * TARGET_SAMPLING_RATE / 1000)
            for change in self.detector.feed(probabilities):
                position = change.frame * FRAME
                if change.kind == "started":
                    start = max(position - prefix, self.audio.start)
                    self.audio.drop_before(start)
                    self._start_item(start)
                    actions.append(event("input_audio_buffer.speech_started", audio_start_ms=_ms(start), item_id=self.item.item_id))
                elif self.item is not None:
                    actions.append(event("input_audio_buffer.speech_stopped", audio_end_ms=_ms(position), item_id=self.item.item_id))
                    actions.append(self._end_turn(position))
            if self.item is None:
                self.audio.drop_before(self.audio.end - prefix)
        if self.item is not None and self.audio.end - self.turn_start >= self.max_turn:
            # A turn at its length limit is committed there; speech going on starts the next one.
            speaking = self.detector is not None and self.detector.speaking
            actions.append(self._end_turn(self.turn_start + self.max_turn))
            if speaking:
                self._start_item(self.audio.start)
                actions.append(event("input_audio_buffer.speech_started", audio_start_ms=_ms(self.audio.start), item_id=self.item.item_id))
        return actions

    def _start_item(self, position: int) -> None:
        self.item = Item(new_id("item"))
        self.turn_start = self.partial_at = position

    def _end_turn(self, position: int) -> Turn:
        assert self.item is not None
        turn = Turn(self.item, self.previous_item_id, self.audio.take(position), _ms(self.turn_start), _ms(position))
        self.previous_item_id, self.item = self.item.item_id, None
        return turn

    async def _commit(self) -> None:
        held_ms = (self.audio.end - self.turn_start) * 1000 // TARGET_SAMPLING_RATE if self.item is not None else 0
        if held_ms < MIN_COMMIT_MS:
            raise ProtocolError(f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms of audio, but buffer only has {held_ms}ms of audio.",
                                code="input_audio_buffer_commit_empty")
        if self.detector is not None:
            self.detector.reset()
        await self._queue(self._end_turn(self.audio.end))

    def _clear(self) -> None:
        self.audio.clear()
        self.item = None
        if self.detector is not None:
            self.detector.reset()

    # --- transcription ------------------------------------------------------------------------

    async def _decode(self, samples: np.ndarray, diarize: bool = False) -> TranscriptionResponse:
        """One turn through admission and the inference queue, like a file request."""
        seconds = len(samples) / TARGET_SAMPLING_RATE
        try:
            async with self.state.admission.admit(seconds, self.settings.admission_wait_s, buffer_bytes(seconds)):
                return await self.state.queue.run_batched(self.handler, samples, self.config.inference_config(diarize))
        except EndpointError:
            raise
        except Exception as error:  # inside the model: the message is kept, the traceback goes to the log
            logger.exception("live transcription failed")
            raise InferenceError(f"inference failed: {type(error).__name__}: {error}") from None

    def _maybe_partial(self) -> None:
        """Decode the turn so far, if it has grown enough since the last time and nothing else waits
        for the engine (partial text never delays anyone's final text)."""
        interval = self.settings.realtime_partial_interval_s
        if self.closed or not interval or (self.partial is not None and not self.partial.done()) or not self.turns.empty() or not self.state.queue.idle:
            return
        if not self._audio_lock.acquire(blocking=False):
            return  # an append is being taken in: its end calls this again
        try:
            item = self.item
            if item is None or self.audio.end - self.turn_start < MIN_PARTIAL_S * TARGET_SAMPLING_RATE or self.audio.end - self.partial_at < interval * TARGET_SAMPLING_RATE:
                return
            self.partial_at = self.audio.end
            samples = self.audio.data[self.turn_start - self.audio.start : self.audio.size].copy()
        finally:
            self._audio_lock.release()
        self.partial = asyncio.create_task(self._partial(item, samples))

    async def _partial(self, item: Item, samples: np.ndarray) -> None:
        try:
            response = await self._decode(samples)
        except EndpointError:
            return  # only a preview: the turn's final decoding reports failures
        finally:
            # The turn may have grown meanwhile: the next partial need not wait for the next append.
            asyncio.get_running_loop().call_soon(self._maybe_partial)
        words = response.text.split()
        agreed = _common_prefix(item.last_words, words)
        item.last_words = words
        if item.done or len(agreed) <= len(item.sent_words) or agreed[: len(item.sent_words)] != item.sent_words:
            return
        new = agreed[len(item.sent_words) :]
        delta = (" " if item.sent_words else "") + " ".join(new)
        item.sent_words = agreed
        await self._send(event("conversation.item.input_audio_transcription.delta", item_id=item.item_id, content_index=0, delta=delta))

    async def _transcribe_turns(self) -> None:
        while True:
            turn = await self.turns.get()
            self.transcribing = True
            try:
                await self._transcribe(turn)
            finally:
                self.transcribing = False

    async def _transcribe(self, turn: Turn) -> None:
        item = turn.item
        seconds = len(turn.samples) / TARGET_SAMPLING_RATE
        speakers = self.speakers
        try:
            response = await self._decode(turn.samples, diarize=speakers is not None)
            # Named in the session's terms off the loop (CAM++ embeddings of each speaker's speech).
            segments = await asyncio.to_thread(self._session_segments, speakers, turn, response) if speakers is not None else []
        except Exception as error:
            if not isinstance(error, EndpointError):  # a fault of ours naming speakers: this turn fails, the session goes on
                logger.exception("live speaker naming failed")
                error = InferenceError(f"naming the turn's speakers failed: {type(error).__name__}: {error}")
            item.done = True
            self.state.metrics.errors.labels(error.kind).inc()
            await self._send(event("conversation.item.input_audio_transcription.failed", item_id=item.item_id, content_index=0,
                                   error={"type": endpoint_error_fields(error)["kind"], "code": error.kind, "message": self.state.host.redact(str(error)), "param": None}))
            return
        self.state.metrics.audio_seconds.labels(ROUTE).inc(seconds)
        text = response.text.strip()
        item.done = True
        sent = item.sent
        if text.startswith(sent) and len(text) > len(sent):
            await self._send(event("conversation.item.input_audio_transcription.delta", item_id=item.item_id, content_index=0, delta=text[len(sent) :]))
        for segment in segments:
            await self._send(event("conversation.item.input_audio_transcription.segment", item_id=item.item_id, content_index=0, id=new_id("seg"), **segment))
        await self._send(event("conversation.item.input_audio_transcription.completed", item_id=item.item_id, content_index=0, transcript=text,
                               usage={"type": "duration", "seconds": round(seconds, 3)}, speaker=_main_speaker(segments), language=response.language,
                               audio_start_ms=turn.start_ms, audio_end_ms=turn.end_ms))

    def _session_segments(self, speakers: SessionSpeakers, turn: Turn, response: TranscriptionResponse) -> list[dict[str, Any]]:
        """The turn's speaker turns (diarized within the turn, text merged by word timings, as for a
        file), their speakers renamed to the session's, times from the session's start."""
        if not response.text.strip():
            return []
        offset = turn.start_ms / 1000
        local = [SpeakerSegment(speaker=t.speaker, start=t.timestamp[0], end=t.timestamp[1]) for t in response.speakers]
        if not local:  # diarization found no speaker turn (very short audio): the whole turn is one
            try:
                embedding = self.handler.embedder.embed(turn.samples)
            except InvalidSpeakerReference:
                return []
            label = speakers.assign({"turn": (embedding, len(turn.samples) / TARGET_SAMPLING_RATE)})["turn"]
            return [{"speaker": label, "text": response.text.strip(), "start": offset, "end": turn.end_ms / 1000}]
        centroids = self.handler.embedder.speaker_centroids(turn.samples, local)
        speech = {label: sum(s.end - s.start for s in local if s.speaker == label) for label in centroids}
        names = speakers.assign({label: (centroids[label], speech[label]) for label in centroids})
        return [{"speaker": names.get(t.speaker, t.speaker), "text": t.text.strip(), "start": round(offset + t.timestamp[0], 3), "end": round(offset + t.timestamp[1], 3)}
                for t in response.speakers if t.text.strip()]


def _main_speaker(segments: list[dict[str, Any]]) -> str | None:
    """The speaker who holds most of a turn's time."""
    held: dict[str, float] = {}
    for segment in segments:
        held[segment["speaker"]] = held.get(segment["speaker"], 0.0) + segment["end"] - segment["start"]
    return max(held, key=held.__getitem__) if held else None


def _ms(position: int) -> int:
    return position * 1000 // TARGET_SAMPLING_RATE


def _common_prefix(a: list[str], b: list[str]) -> list[str]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
