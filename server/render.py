"""Every response body the server sends is made here: errors, the OpenAI formats (json, text, srt,
vtt, verbose_json, diarized_json), tt-media-server's JSON, and the streamed events (OpenAI SSE,
tt-media-server NDJSON)."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse, PlainTextResponse, Response
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from config import InferenceConfig
from errors import EndpointError
from schemas import TranscriptionResponse

MAX_ERROR_MESSAGE = 2000


# --- errors ----------------------------------------------------------------------------------------


def error_body(path: str, error: EndpointError, message: str) -> dict[str, Any]:
    """OpenAI-style routes (``/audio/``) answer OpenAI's error object; the rest the HF runtime's
    ``{"error": message}`` (plus the kind)."""
    if "/audio/" in path:
        return {"error": {"message": message, "type": error.kind, "param": None, "code": error.status_code}}
    return {"error": message, "error_type": error.kind}


def error_response(path: str, error: EndpointError, message: str) -> JSONResponse:
    return JSONResponse(error_body(path, error, message[:MAX_ERROR_MESSAGE]), status_code=error.status_code, headers=error.headers)


# --- OpenAI ---------------------------------------------------------------------------------------


def openai_response(response: TranscriptionResponse, response_format: str, config: InferenceConfig, granularities: list[str]) -> Response:
    if response_format == "json":
        return JSONResponse({"text": response.text})
    if response_format == "text":
        return PlainTextResponse(response.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(srt(response))
    if response_format == "vtt":
        return PlainTextResponse(vtt(response), media_type="text/vtt")
    if response_format == "diarized_json":
        return JSONResponse(diarized_json(response))
    return JSONResponse(verbose_json(response, config, granularities))


# Whisper's per-segment statistics, sent when the decoding pipeline computed them.
SEGMENT_STATISTICS = ("avg_logprob", "compression_ratio", "no_speech_prob")


def verbose_json(response: TranscriptionResponse, config: InferenceConfig, granularities: list[str]) -> dict[str, Any]:
    """OpenAI's verbose_json, with ``speaker`` on segments and words when diarized."""
    segments = []
    for index, chunk in enumerate(response.chunks):
        temperature = getattr(chunk, "temperature", None)
        segment: dict[str, Any] = {"id": index, "start": chunk.timestamp[0], "end": chunk.timestamp[1], "text": chunk.text,
                                   "temperature": config.temperature if temperature is None else temperature}
        for name in SEGMENT_STATISTICS:
            if getattr(chunk, name, None) is not None:
                segment[name] = getattr(chunk, name)
        if chunk.speaker is not None:
            segment["speaker"] = chunk.speaker
        segments.append(segment)
    body: dict[str, Any] = {"task": config.task.value, "language": LANGUAGES.get(response.language or "", response.language), "duration": response.duration, "text": response.text}
    if not granularities or "segment" in granularities:
        body["segments"] = segments
    if "word" in granularities:
        body["words"] = [{"word": w.text, "start": w.start, "end": w.end, **({"speaker": w.speaker} if w.speaker else {})} for w in response.words or []]
    if response.speakers:
        body["speakers"] = sorted({turn.speaker for turn in response.speakers})
    return {**body, **speaker_matches(response)}


def diarized_segments(response: TranscriptionResponse) -> list[dict[str, Any]]:
    """OpenAI's ``diarized_json`` segments (also the ``transcript.text.segment`` stream events): one
    per speaker turn, which the merge built word by word, so a sentence two people shared is split
    between them; the ASR segments (each under its majority speaker) only when there are no turns."""
    pieces = [(t.timestamp, t.speaker, t.text) for t in response.speakers] or [(c.timestamp, c.speaker or "", c.text) for c in response.chunks]
    return [{"type": "transcript.text.segment", "id": f"seg_{index}", "start": start, "end": end, "speaker": speaker, "text": text}
            for index, ((start, end), speaker, text) in enumerate(pieces)]


def usage(response: TranscriptionResponse) -> dict[str, Any]:
    return {"type": "duration", "seconds": response.duration}


def speaker_matches(response: TranscriptionResponse) -> dict[str, Any]:
    """With known speakers, how each name fared (its speaker and cosine similarity): an extra field
    the openai SDK keeps (``result.speaker_matches``)."""
    return {"speaker_matches": [m.model_dump() for m in response.speaker_matches]} if response.speaker_matches is not None else {}


def diarized_json(response: TranscriptionResponse) -> dict[str, Any]:
    """OpenAI's ``diarized_json`` (the SDK's ``TranscriptionDiarized``); our speaker labels."""
    return {"task": "transcribe", "duration": response.duration, "text": response.text,
            "segments": diarized_segments(response), "usage": usage(response), **speaker_matches(response)}


def cues(response: TranscriptionResponse) -> list[tuple[float, float, str]]:
    """Subtitle cues: one per segment, prefixed ``[SPEAKER_00]`` when diarized."""
    return [(c.timestamp[0], c.timestamp[1], f"[{c.speaker}] {c.text}" if c.speaker else c.text) for c in response.chunks]


def clock(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(response: TranscriptionResponse) -> str:
    return "".join(f"{i}\n{clock(start, ',')} --> {clock(end, ',')}\n{text}\n\n" for i, (start, end, text) in enumerate(cues(response), 1))


def vtt(response: TranscriptionResponse) -> str:
    return "WEBVTT\n\n" + "".join(f"{clock(start, '.')} --> {clock(end, '.')}\n{text}\n\n" for start, end, text in cues(response))


# --- tt-media-server ---------------------------------------------------------------------------------


def tt(response: TranscriptionResponse, diarized: bool) -> dict[str, Any]:
    """tt-media-server's answer: ``text`` (what whisper_tt reads) and duration; segments and
    speakers when diarization was asked for."""
    body: dict[str, Any] = {"text": response.text, "duration": response.duration, "language": response.language}
    if diarized:
        body["segments"] = [{"id": i, "speaker": c.speaker, "start_time": c.timestamp[0], "end_time": c.timestamp[1], "text": c.text} for i, c in enumerate(response.chunks)]
        body["speakers"] = sorted({turn.speaker for turn in response.speakers})
        body["speaker_count"] = len(body["speakers"])
    return body


# --- streamed events ---------------------------------------------------------------------------------


def sse(event: dict[str, Any]) -> bytes:
    """One Server-Sent Event as the openai SDK reads it (a ``data:`` line holding the JSON event)."""
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def ndjson(line: dict[str, Any]) -> bytes:
    return (json.dumps(line, ensure_ascii=False) + "\n").encode()


def delta_event(delta: str, segment_id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "transcript.text.delta", "delta": delta}
    if segment_id is not None:
        event["segment_id"] = segment_id
    return event


def done_event(response: TranscriptionResponse) -> dict[str, Any]:
    return {"type": "transcript.text.done", "text": response.text, "usage": usage(response)}


def stream_error(error: EndpointError, message: str) -> dict[str, Any]:
    """An error after the stream began (the status line is sent): OpenAI's SDK raises on an event
    with ``error``; NDJSON readers see the same object on the last line."""
    return {"type": "error", "error": {"message": message[:MAX_ERROR_MESSAGE], "type": error.kind, "param": None, "code": error.status_code}}
