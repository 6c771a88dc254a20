"""Enrolled speakers (persistent voiceprints): enroll once with a few seconds of someone's voice, then
name them in any transcription (``known_speakers: ["alice"]``, or OpenAI's ``known_speaker_names[]``
without references). Behind the API key; the store is the handler's (``VOICEPRINTS_DB``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from audio import TARGET_SAMPLING_RATE
from diarization.voiceprints import EnrolledSpeaker
from errors import UnsupportedMediaType
from server.bodies import body_bytes, media_type, read_form, validated
from server.dependencies import ServerState, get_state, ready_handler, require_api_key

router = APIRouter(prefix="/v1/speakers", tags=["speakers"], dependencies=[Depends(require_api_key)])


class EnrollForm(BaseModel):
    """The multipart fields of ``POST /v1/speakers`` besides ``file`` (2-10 s of that person speaking)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The name transcriptions will label this speaker with.")


class SpeakerList(BaseModel):
    object: str = "list"
    data: list[EnrolledSpeaker]


class DeletedSpeaker(BaseModel):
    name: str
    object: str = "speaker"
    deleted: bool = True


ENROLL_DOC = {"requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}, **EnrollForm.model_json_schema()["properties"]}, "required": ["file", "name"]}}}}}


@router.post("", status_code=201, summary="Enroll (or re-enroll) a speaker: multipart 'name' + 'file' (2-10 s of their voice).", openapi_extra=ENROLL_DOC)
async def enroll(request: Request, state: ServerState = Depends(get_state), handler: Any = Depends(ready_handler)) -> EnrolledSpeaker:
    if media_type(request) != "multipart/form-data":
        raise UnsupportedMediaType(f"unsupported Content-Type {media_type(request)!r}: send multipart/form-data with 'name' and 'file'")
    audio, fields = await read_form(request)
    form = validated(EnrollForm, fields)
    # Embedding the reference is model work: admitted and run on the inference workers like a transcription.
    async with state.admission.admit_audio(audio, TARGET_SAMPLING_RATE, state.settings.admission_wait_s, body_bytes(request)):
        return await state.queue.run(handler.enroll_speaker, form.name, audio)


@router.get("", summary="The enrolled speakers (names, embedding model, enrolment time; never the voiceprints).")
async def list_speakers(handler: Any = Depends(ready_handler)) -> SpeakerList:
    return SpeakerList(data=await run_in_threadpool(handler.list_speakers))


@router.delete("/{name}", summary="Forget an enrolled speaker's voiceprint.")
async def delete_speaker(name: str, handler: Any = Depends(ready_handler)) -> DeletedSpeaker:
    await run_in_threadpool(handler.delete_speaker, name)
    return DeletedSpeaker(name=name)
