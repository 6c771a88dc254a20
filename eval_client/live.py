"""Live transcription through OpenAI's Realtime transcription protocol (``/v1/realtime?intent=transcription``):
a file streamed at a chosen pace as pcm16 at 24 kHz, the server's VAD cutting turns, and per turn the
time to its first text and to its final text.

Times are taken against the moment the client sent the audio in question: ``first_delta_s`` from
when the turn's first audio was sent, ``final_s`` from when its last speech was sent (for a turn the
server's VAD ended, ``audio_end_ms`` less the session's ``silence_duration_ms``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import numpy as np
import soxr
from pydantic import BaseModel, Field

LIVE_RATE = 24000  # the protocol's pcm16 rate
CHUNK_S = 0.1  # audio per append, as a microphone client sends it


class LiveTurn(BaseModel):
    """One committed turn of a live session, as the client saw it."""

    item_id: str
    start_s: float | None = Field(None, description="Where the turn starts in the streamed audio.")
    end_s: float | None = None
    text: str | None = None  # None: no final text came (failed, or the session ended first)
    speaker: str | None = None
    first_delta_s: float | None = Field(None, description="From sending the turn's first audio to its first text.")
    final_s: float | None = Field(None, description="From sending the turn's last speech to its final text.")
    error: str | None = None


class LiveResult(BaseModel):
    text: str
    turns: list[LiveTurn]
    segments: list[tuple[str, float, float]] = Field(default_factory=list, description="(speaker, start, end) from segment events.")
    errors: list[str] = Field(default_factory=list, description="The session's error events.")


def pcm16_chunks(array: np.ndarray, sr: int, chunk_s: float = CHUNK_S) -> list[bytes]:
    """Mono samples → 16-bit little-endian PCM at 24 kHz, in ``chunk_s`` pieces."""
    samples = soxr.resample(np.asarray(array, dtype=np.float32), sr, LIVE_RATE) if sr != LIVE_RATE else np.asarray(array, dtype=np.float32)
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    step = round(chunk_s * LIVE_RATE) * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def realtime_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    base = base if base.endswith("/v1") else base + "/v1"
    return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/realtime?intent=transcription"


async def stream_live(base_url: str, api_key: str | None, array: np.ndarray, sr: int, *, pace: float = 1.0, tail_s: float = 1.0,
                      session: dict[str, Any] | None = None, timeout_s: float = 300.0) -> LiveResult:
    """Stream ``array`` to a live session at ``pace`` × real time (then ``tail_s`` of silence, then
    a commit if a turn is still open) and collect the turns' texts and timings."""
    from websockets.asyncio.client import connect

    chunks = pcm16_chunks(np.concatenate([np.asarray(array, dtype=np.float32), np.zeros(round(tail_s * sr), np.float32)]), sr)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    turns: dict[str, LiveTurn] = {}
    order: list[str] = []
    segments: list[tuple[str, float, float]] = []
    errors: list[str] = []
    sent_at: list[float] = []  # wall time each chunk was sent, by chunk index
    speech_end: dict[str, float] = {}  # item → where its speech ended in the audio
    silence_s = 0.5
    open_item: str | None = None
    committed: set[str] = set()

    def sent(position_s: float) -> float | None:
        """When the chunk holding ``position_s`` of the audio was sent."""
        return sent_at[min(len(sent_at) - 1, int(position_s / CHUNK_S))] if sent_at else None

    def vad_silence(session_body: dict[str, Any]) -> float:
        vad = ((session_body.get("audio") or {}).get("input") or {}).get("turn_detection") or session_body.get("turn_detection") or {}
        return vad.get("silence_duration_ms", 500) / 1000

    async with connect(realtime_url(base_url), additional_headers=headers, max_size=None) as ws:
        created = json.loads(await ws.recv())
        if created.get("type") == "error":
            raise ConnectionError(f"the session was refused: {created['error'].get('message')}")
        if session:
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", **session}}))
        silence_s = vad_silence(created.get("session") or {})

        async def send_audio() -> None:
            nonlocal open_item
            start = time.perf_counter()
            for index, chunk in enumerate(chunks):
                if pace > 0:
                    await asyncio.sleep(max(0.0, start + index * CHUNK_S / pace - time.perf_counter()))
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode("ascii")}))
                sent_at.append(time.perf_counter())
            if open_item is not None and open_item not in committed:
                await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))

        sender = asyncio.create_task(send_audio())
        deadline = time.perf_counter() + timeout_s
        try:
            while True:
                if sender.done() and all(turns[i].text is not None or turns[i].error for i in committed) and (open_item is None or open_item in committed):
                    break
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), timeout=max(0.1, min(1.0, deadline - time.perf_counter()))))
                except TimeoutError:
                    if time.perf_counter() > deadline:
                        errors.append(f"no final text within {timeout_s:g} s")
                        break
                    continue
                now = time.perf_counter()
                kind, item_id = message.get("type"), message.get("item_id")
                if item_id and item_id not in turns:
                    turns[item_id] = LiveTurn(item_id=item_id)
                turn = turns.get(item_id) if item_id else None
                if kind in ("session.updated", "transcription_session.updated"):
                    silence_s = vad_silence(message.get("session") or {})
                elif kind == "input_audio_buffer.speech_started":
                    open_item, turn.start_s = item_id, message["audio_start_ms"] / 1000
                elif kind == "input_audio_buffer.speech_stopped":
                    turn.end_s = message["audio_end_ms"] / 1000
                    speech_end[item_id] = turn.end_s - silence_s  # the VAD waits that long after the speech
                elif kind == "input_audio_buffer.committed":
                    committed.add(item_id)
                    order.append(item_id)
                elif kind == "conversation.item.input_audio_transcription.delta":
                    if turn.first_delta_s is None and turn.start_s is not None and (at := sent(turn.start_s)) is not None:
                        turn.first_delta_s = now - at
                elif kind == "conversation.item.input_audio_transcription.segment":
                    segments.append((message["speaker"], message["start"], message["end"]))
                elif kind == "conversation.item.input_audio_transcription.completed":
                    turn.text, turn.speaker = message.get("transcript", ""), message.get("speaker")
                    if turn.start_s is None and "audio_start_ms" in message:
                        turn.start_s = message["audio_start_ms"] / 1000
                    if turn.end_s is None and "audio_end_ms" in message:
                        turn.end_s = message["audio_end_ms"] / 1000
                    end = speech_end.get(item_id, turn.end_s if turn.end_s is not None else len(sent_at) * CHUNK_S)
                    at = sent(end)
                    turn.final_s = now - at if at is not None else None
                    if turn.first_delta_s is None and turn.start_s is not None and (start_at := sent(turn.start_s)) is not None:
                        turn.first_delta_s = now - start_at
                elif kind == "conversation.item.input_audio_transcription.failed":
                    turn.error = str((message.get("error") or {}).get("message"))
                elif kind == "error":
                    errors.append(str((message.get("error") or {}).get("message")))
        finally:
            sender.cancel()
    done = [turns[i] for i in order]
    return LiveResult(text=" ".join(t.text for t in done if t.text), turns=done, segments=segments, errors=errors)
