"""OpenAI's Realtime transcription-session protocol: the client events this server takes, the
session configuration they update, and the server events it sends, in both of the protocol's
shapes (read from the ``openai`` SDK's ``types/realtime`` and ``types/beta/realtime``):

- beta (``OpenAI-Beta: realtime=v1`` header or ``openai-beta.realtime-v1`` subprotocol):
  ``transcription_session.update`` → ``transcription_session.created|updated`` with a flat session
  (``input_audio_format``, ``input_audio_transcription``, ``turn_detection``);
- GA: ``session.update`` with ``session.type == "transcription"`` → ``session.created|updated`` with
  ``audio.input.{format, transcription, turn_detection}``.

Either update event is accepted on any connection and answered in its own shape. The rest
(``input_audio_buffer.*``, ``conversation.item.input_audio_transcription.*``, ``error``) is common.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from audio import RawEncoding
from config import InferenceConfig, Timestamps, describe_validation_error
from errors import EndpointError

# OpenAI's limit on one append's audio (15 MiB), as base64 text.
MAX_APPEND_BASE64_CHARS = 15 * 2**20 * 4 // 3 + 4
# A commit needs at least this much audio (OpenAI: 100 ms).
MIN_COMMIT_MS = 100
GA_FORMATS: dict[str, RawEncoding] = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


class ProtocolError(Exception):
    """A client event this server cannot act on: answered with an ``error`` event, the session goes on."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.param, self.kind = code, param, kind


class TurnDetection(BaseModel):
    """``server_vad`` (Silero VAD here); the fields OpenAI uses for responses are accepted and unused."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0, le=5000)
    silence_duration_ms: int = Field(500, ge=32, le=10000)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _server_vad_only(cls, value: Any) -> Any:
        if value == "semantic_vad":
            raise ValueError("semantic_vad is not available on this server; use server_vad, or null for manual commits")
        return value


class Transcription(BaseModel):
    """``input_audio_transcription`` / ``audio.input.transcription``, plus this server's
    ``diarize`` and ``known_speaker_names`` (enrolled voiceprints that name live speakers)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="Accepted and ignored: the server runs the model it was started with.")
    language: str | None = None
    prompt: str | None = None
    known_speaker_names: list[str] | None = None
    diarize: bool | None = Field(None, description="Label each turn's speakers (default: when the server has a diarization model).")

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        return _inference_field("language", value)

    @field_validator("known_speaker_names")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        _inference_field("known_speakers", value)  # how many, twice named, printable names
        return value or None


def _inference_field(name: str, value: Any) -> Any:
    """``value`` checked as InferenceConfig checks its field ``name`` (one place for those rules)."""
    try:
        return getattr(InferenceConfig.model_validate({name: value}), name)
    except ValidationError as error:
        raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())) from None


class BetaSession(BaseModel):
    """The ``session`` of ``transcription_session.update``."""

    model_config = ConfigDict(extra="forbid")

    input_audio_format: RawEncoding | None = None
    input_audio_transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    input_audio_noise_reduction: dict[str, Any] | None = Field(None, description="Accepted; this server does no noise reduction.")
    include: list[str] | None = None
    modalities: list[str] | None = None
    client_secret: dict[str, Any] | None = None


class GAFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: Literal[24000] | None = None


class GAInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: GAFormat | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    noise_reduction: dict[str, Any] | None = None


class GAAudio(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: GAInput | None = None


class GASession(BaseModel):
    """The ``session`` of ``session.update`` (transcription sessions only)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["transcription"]
    audio: GAAudio | None = None
    include: list[str] | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _transcription_only(cls, value: Any) -> Any:
        if value == "realtime":
            raise ValueError("this server runs transcription sessions only: send session.type 'transcription'")
        return value


class LiveConfig(BaseModel):
    """A session's effective configuration."""

    input_format: RawEncoding = "pcm16"
    model: str = "whisper-1"
    language: str | None = None
    prompt: str | None = None
    known_speaker_names: list[str] = Field(default_factory=list)
    diarize: bool | None = None
    turn_detection: TurnDetection | None = Field(default_factory=TurnDetection)
    include: list[str] | None = None

    def inference_config(self, diarize: bool) -> InferenceConfig:
        """What each turn is decoded with: as a file request with segment timestamps (diarized within
        the turn when ``diarize``; the session names its speakers), in trimmed encoder windows (a
        turn's text waits for its decoding: several times faster on short turns on CPU, docs/realtime.md)."""
        return InferenceConfig(language=self.language, prompt=self.prompt or None, timestamps=Timestamps.segment, diarize=diarize, trim_encoder_window=True)

    def updated(self, format: RawEncoding | None, transcription: Transcription | None, turn_detection: TurnDetection | None, fields: set[str], include: list[str] | None) -> "LiveConfig":
        """Only what the update names changes (``turn_detection: null`` turns VAD off)."""
        changes: dict[str, Any] = {}
        if format is not None:
            changes["input_format"] = format
        if transcription is not None:
            changes.update({k: v for k, v in transcription.model_dump(exclude_unset=True).items() if v is not None or k != "model"})
            if changes.get("known_speaker_names") is None:
                changes.pop("known_speaker_names", None)
        if "turn_detection" in fields:
            changes["turn_detection"] = None if turn_detection is None else TurnDetection.model_validate({**(self.turn_detection.model_dump(exclude_unset=True) if self.turn_detection else {}), **turn_detection.model_dump(exclude_unset=True)})
        if include is not None:
            changes["include"] = include
        return self.model_copy(update=changes)

    def _transcription(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "language": self.language, "prompt": self.prompt or ""}
        if self.known_speaker_names:
            body["known_speaker_names"] = self.known_speaker_names
        if self.diarize is not None:
            body["diarize"] = self.diarize
        return body

    def _turn_detection(self) -> dict[str, Any] | None:
        if self.turn_detection is None:
            return None
        return self.turn_detection.model_dump(include={"type", "threshold", "prefix_padding_ms", "silence_duration_ms"})

    def beta_session(self, session_id: str) -> dict[str, Any]:
        return {"id": session_id, "object": "realtime.transcription_session", "input_audio_format": self.input_format, "input_audio_transcription": self._transcription(),
                "turn_detection": self._turn_detection(), "input_audio_noise_reduction": None, "include": self.include, "modalities": ["text"], "client_secret": None}

    def ga_session(self, session_id: str) -> dict[str, Any]:
        ga_format = {"type": next(k for k, v in GA_FORMATS.items() if v == self.input_format)}
        if self.input_format == "pcm16":
            ga_format["rate"] = 24000
        return {"type": "transcription", "id": session_id, "object": "realtime.transcription_session", "include": self.include,
                "audio": {"input": {"format": ga_format, "transcription": self._transcription(), "turn_detection": self._turn_detection(), "noise_reduction": None}}}


def apply_update(config: LiveConfig, event_type: str, session: Any) -> LiveConfig:
    """``config`` after a ``transcription_session.update`` or ``session.update``; ProtocolError
    naming each bad field otherwise."""
    if not isinstance(session, dict):
        raise ProtocolError(f"{event_type}: 'session' must be an object", param="session")
    try:
        if event_type == "transcription_session.update":
            beta = BetaSession.model_validate(session)
            return config.updated(beta.input_audio_format, beta.input_audio_transcription, beta.turn_detection, beta.model_fields_set, beta.include)
        ga = GASession.model_validate(session)
        audio_input = ga.audio.input if ga.audio and ga.audio.input else GAInput()
        audio_format = GA_FORMATS[audio_input.format.type] if audio_input.format else None
        return config.updated(audio_format, audio_input.transcription, audio_input.turn_detection, audio_input.model_fields_set, ga.include)
    except ValidationError as error:
        model = BetaSession if event_type == "transcription_session.update" else GASession
        raise ProtocolError(f"{event_type}: " + describe_validation_error(error, sorted(model.model_fields)).removeprefix("invalid parameters: "), param="session") from None


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event: its type, a fresh ``event_id``, its fields."""
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(message: str, *, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None, event_id: str | None = None) -> dict[str, Any]:
    """OpenAI's ``error`` event (``RealtimeErrorEvent``): ``event_id`` names the client event at fault."""
    return event("error", error={"type": kind, "code": code, "message": message, "param": param, "event_id": event_id})


def endpoint_error_fields(error: EndpointError) -> dict[str, Any]:
    """An EndpointError as the ``error`` object's type and code."""
    return {"kind": "invalid_request_error" if error.status_code < 500 else "server_error", "code": error.kind}
