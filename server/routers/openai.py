"""OpenAI's audio API (multipart): transcriptions and translations, every response format, and
``stream=true`` as Server-Sent Events exactly as the official ``openai`` SDK parses them.

Diarization runs only when asked for (``diarize``, ``response_format=diarized_json``, speaker counts
or known speakers): a plain OpenAI request stays a plain transcription on any deployment."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request
from fastapi.responses import Response
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from config import InferenceConfig, Task
from errors import BadRequest, EndpointError, InvalidParameters
from schemas import TranscriptionResponse
from server import render
from server.bodies import parse_json, read_form, validated
from server.dependencies import ServerState
from server.streaming import StreamText, stream_response
from server.transcription import transcribe

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json"]
STREAMABLE = ("json", "verbose_json", "diarized_json")


class OpenAITranscriptionForm(BaseModel):
    """The multipart fields of OpenAI's /v1/audio/transcriptions, plus diarization."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="Accepted and ignored: the server runs the model it was started with.")
    language: str | None = None
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float = 0.0
    timestamp_granularities: list[Literal["word", "segment"]] = Field(default_factory=list, validation_alias=AliasChoices("timestamp_granularities", "timestamp_granularities[]"))
    stream: bool = Field(False, description="true: Server-Sent Events (transcript.text.delta …, transcript.text.done); json, verbose_json and diarized_json only.")
    chunking_strategy: Literal["auto"] | dict[str, Any] | None = Field(None, description="'auto' or {'type': 'server_vad'}: this server always segments long audio with its own VAD.")
    diarize: bool | None = Field(None, description="Label speakers (also implied by diarized_json, speaker counts and known speakers).")
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    known_speaker_names: list[str] = Field(default_factory=list, description="Names for the diarized speakers: with known_speaker_references, one per reference; alone, the names of enrolled voiceprints (POST /v1/speakers).")
    known_speaker_references: list[str] = Field(default_factory=list, description="Data URLs (data:audio/wav;base64,…) of 2-10 s of each named speaker, in known_speaker_names' order.")

    @field_validator("chunking_strategy", mode="before")
    @classmethod
    def _chunking_strategy(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().startswith("{"):  # a JSON object sent as one form field
            value = parse_json(value, "chunking_strategy")
        if isinstance(value, dict):
            if value.get("type") != "server_vad":
                raise ValueError("must be 'auto' or an object with type 'server_vad'")
            tuned = sorted(set(value) - {"type"})
            if tuned:
                raise ValueError(f"server_vad settings {tuned} cannot be tuned per request on this server (it segments with its own VAD); send 'auto'")
        return value

    @field_validator("known_speaker_names", "known_speaker_references", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # one plain form field (curl -F name=alice)

    def wants_diarization(self) -> bool:
        return bool(self.diarize or self.response_format == "diarized_json" or self.known_speaker_names or any(
            v is not None for v in (self.num_speakers, self.min_speakers, self.max_speakers)))

    def known_speakers(self) -> dict[str, str] | list[str] | None:
        """The handler's ``known_speakers``: {name: reference} with references, enrolled names without."""
        if not self.known_speaker_names:
            return None
        if not self.known_speaker_references:
            return list(self.known_speaker_names)
        if len(set(self.known_speaker_names)) != len(self.known_speaker_names):
            raise InvalidParameters("known_speaker_names: a known speaker is named twice")
        return dict(zip(self.known_speaker_names, self.known_speaker_references))

    def inference_config(self, task: Task) -> InferenceConfig:
        if self.stream and self.response_format not in STREAMABLE:
            raise BadRequest(f"stream: response_format {self.response_format!r} cannot be streamed; use json, verbose_json or diarized_json (or stream=false)")
        if self.response_format == "diarized_json" and task is Task.translate:
            raise InvalidParameters("response_format: diarized_json is for transcriptions; translations answer json, text, srt, vtt or verbose_json")
        if self.diarize is False and (self.response_format == "diarized_json" or self.known_speaker_names):
            raise InvalidParameters("diarize is false, but response_format=diarized_json and known speakers need diarization")
        if self.known_speaker_references and len(self.known_speaker_references) != len(self.known_speaker_names):
            raise InvalidParameters(f"known_speaker_references: {len(self.known_speaker_references)} reference(s) for {len(self.known_speaker_names)} known_speaker_names; send one reference per name (or names alone for enrolled speakers)")
        # Word timestamps imply the segment ones too (the handler returns both).
        timestamps = "word" if "word" in self.timestamp_granularities else "segment"
        parameters = {"task": task.value, "timestamps": timestamps, "temperature": self.temperature, "language": self.language, "prompt": self.prompt or None,
                      "diarize": self.wants_diarization(), "num_speakers": self.num_speakers, "min_speakers": self.min_speakers, "max_speakers": self.max_speakers,
                      "known_speakers": self.known_speakers()}
        return InferenceConfig.parse({k: v for k, v in parameters.items() if v is not None})


FORM_SCHEMA = {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}, **OpenAITranscriptionForm.model_json_schema()["properties"]}, "required": ["file"]}


async def handle(request: Request, state: ServerState, task: Task) -> Response:
    """A multipart OpenAI request → the response in its format, or the SSE stream."""
    audio, fields = await read_form(request)
    form = validated(OpenAITranscriptionForm, fields)
    config = form.inference_config(task)
    if form.stream:
        return await stream_response(request, state, audio, config, SSEText(diarized=form.wants_diarization()), media_type="text/event-stream")
    response = await transcribe(request, state, audio, config)
    return render.openai_response(response, form.response_format, config, form.timestamp_granularities)


class SSEText(StreamText):
    """OpenAI's transcription stream: ``transcript.text.delta`` per new text, then (diarized)
    ``transcript.text.segment`` per speaker segment, then ``transcript.text.done``."""

    def __init__(self, diarized: bool):
        super().__init__()
        self.diarized = diarized

    def text(self, delta: str) -> bytes:
        return render.sse(render.delta_event(delta))

    def done(self, response: TranscriptionResponse) -> bytes:
        segments = b"".join(render.sse(segment) for segment in render.diarized_segments(response)) if self.diarized else b""
        return segments + render.sse(render.done_event(response))

    def error(self, error: EndpointError, message: str) -> bytes:
        return render.sse(render.stream_error(error, message))
