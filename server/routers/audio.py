"""The audio paths, with and without ``/v1`` (lmms-eval's base URL often ends in /v1): one route per
path, dispatching on Content-Type — multipart is OpenAI's API, JSON tt-media-server's."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from config import Task
from errors import UnsupportedMediaType
from server.bodies import media_type
from server.dependencies import ServerState, get_state, ready_handler, require_api_key
from server.routers import openai, tt

router = APIRouter(dependencies=[Depends(require_api_key), Depends(ready_handler)])

BODY_DOC = {"requestBody": {"content": {"multipart/form-data": {"schema": openai.FORM_SCHEMA}, "application/json": {"schema": tt.TTTranscriptionRequest.model_json_schema()}}}}


async def dispatch(request: Request, state: ServerState, task: Task) -> Response:
    kind = media_type(request)
    if kind == "application/json":
        return await tt.handle(request, state, task)
    if kind == "multipart/form-data":
        return await openai.handle(request, state, task)
    raise UnsupportedMediaType(f"unsupported Content-Type {kind!r}: send multipart/form-data (OpenAI) or application/json (tt-media-server)")


@router.post("/v1/audio/transcriptions", summary="OpenAI-compatible transcription (multipart) or tt-media-server JSON", openapi_extra=BODY_DOC)
@router.post("/audio/transcriptions", summary="tt-media-server / lmms-eval whisper_tt (JSON) or OpenAI multipart", openapi_extra=BODY_DOC)
async def transcriptions(request: Request, state: ServerState = Depends(get_state)) -> Response:
    return await dispatch(request, state, Task.transcribe)


@router.post("/v1/audio/translations", summary="OpenAI-compatible translation to English (multipart) or tt-media-server JSON", openapi_extra=BODY_DOC)
@router.post("/audio/translations", summary="Translation to English: tt-media-server JSON or OpenAI multipart", openapi_extra=BODY_DOC)
async def translations(request: Request, state: ServerState = Depends(get_state)) -> Response:
    return await dispatch(request, state, Task.translate)
