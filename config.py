"""Deployment settings (environment) and per-request inference parameters."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

from errors import InvalidParameters, ModelLoadError

ModelT = TypeVar("ModelT", bound=BaseModel)

DEFAULT_ASR_MODEL = "models/whisper-base"

# Known speakers (speaker identification): how many a request may name, and each reference's length
# (OpenAI's transcription API asks for 2-10 s references).
MAX_KNOWN_SPEAKERS = 8
MIN_REFERENCE_SECONDS = 2.0
MAX_REFERENCE_SECONDS = 10.0
MAX_SPEAKER_NAME_LENGTH = 64
# Cosine similarity at which a reference names a cluster: calibrated on the dev diarization set
# (scripts/calibrate_speaker_id.py; distributions in docs/diarization.md).
DEFAULT_SPEAKER_MATCH_THRESHOLD = 0.46


class ModelSettings(BaseSettings):
    """What a deployment loads, read once from environment variables (or a ``.env`` file).

    On HF Inference Endpoints these are the endpoint's env vars and secrets.
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", protected_namespaces=())

    asr_model: str = Field(DEFAULT_ASR_MODEL, description="Hub id or local directory of a Whisper checkpoint.")
    assistant_model: str | None = Field(None, description="Draft model for speculative decoding (distil-whisper).")
    diarization_model: str | None = Field(None, description="pyannote pipeline: hub id or local directory.")
    hf_token: SecretStr | None = Field(None, validation_alias=AliasChoices("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "hf_token"))
    device: str | None = Field(None, description="cuda, cuda:1, cpu… (default: cuda when available).")
    dtype: Literal["float16", "bfloat16", "float32"] | None = Field(None, description="Default: float16 on GPU, float32 on CPU.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    max_audio_seconds: float = Field(4 * 3600, gt=0, description="Longer audio is refused (413).")
    torch_threads: int | None = Field(None, ge=1, description="Intra-op CPU threads (default: torch's choice).")
    asr_backend: Literal["auto", "transformers", "ctranslate2"] = Field(
        "auto", description="Execution engine: transformers (PyTorch; GPU, speculative decoding) or ctranslate2 (faster-whisper's engine, int8; the fast CPU path). auto: transformers on a GPU or with an assistant model, else ctranslate2."
    )
    ct2_model: str | None = Field(None, description="CTranslate2 directory for asr_backend=ctranslate2 (default: '<asr_model>-ct2' beside the checkpoint, else converted from it).")
    compute_type: str = Field("int8", description="CTranslate2 compute type: int8, int8_float32, float32, float16, int8_float16, default.")
    cpu_threads: int | None = Field(None, ge=1, description="CTranslate2 intra-op threads (default: torch_threads, else the CPU count).")
    voiceprints_db: str = Field("voiceprints.sqlite3", description="SQLite file of enrolled speakers' voiceprints (relative paths: to the repository directory).")
    speaker_match_threshold: float = Field(DEFAULT_SPEAKER_MATCH_THRESHOLD, ge=-1, le=1, description="Cosine similarity at which a known speaker's reference names a diarized speaker.")
    trim_encoder_window: bool = Field(False, description="CTranslate2: encode short chunks, and on any audio the rest of a window Whisper stopped early in (seek-on remainders), in a trimmed window (chunk + 5 s, at least 10 s) instead of Whisper's full 30 s, checked and redone in full on failure; faster on short clips on CPU. Off by default: Whisper was trained on full windows, and the raw text changes (punctuation) on some clips (docs/decoding.md).")

    @field_validator("assistant_model", "diarization_model", "hf_token", "device", "dtype", "ct2_model", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # Endpoint UIs and shells often pass an empty string for "not set".
        return None if isinstance(value, str) and not value.strip() else value

    def resolved_backend(self) -> Literal["transformers", "ctranslate2"]:
        """The one rule for the default engine: CTranslate2 is the fast CPU path (int8), transformers
        the GPU path (fp16 + SDPA) and the only one with speculative decoding."""
        if self.asr_backend != "auto":
            return self.asr_backend
        return "transformers" if self.resolved_device().startswith("cuda") or self.assistant_model else "ctranslate2"

    def resolved_device(self) -> str:
        import torch

        if self.device:
            return self.device
        return "cuda:0" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self):
        import torch

        if self.dtype:
            return getattr(torch, self.dtype)
        return torch.float16 if self.resolved_device().startswith("cuda") else torch.float32

    def token(self) -> str | None:
        return self.hf_token.get_secret_value() if self.hf_token else None


def locate_model(name: str, base_dir: str | Path) -> str:
    """A local directory (absolute, or relative to the repo dir or the cwd) or else a hub id.

    Names that look like paths but exist nowhere fail here, with the fix, instead of as a confusing
    hub lookup."""
    for candidate in (Path(name), Path(base_dir) / name):
        if candidate.is_dir():
            return str(candidate.resolve())
    if name.startswith((".", "/", "~")) or name.startswith("models/") or name.count("/") > 1:
        raise ModelLoadError(f"model directory {name!r} not found (looked in {Path(base_dir).resolve()} and the working directory); run `make models` or set the env var to a hub id")
    return name


class Task(str, Enum):
    transcribe = "transcribe"
    translate = "translate"


class Timestamps(str, Enum):
    none = "none"
    segment = "segment"
    word = "word"


class InferenceConfig(BaseModel):
    """Per-request parameters (the ``parameters`` object of a request). Unknown names are errors."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    task: Task = Task.transcribe
    batch_size: int = Field(24, ge=1, le=256, description="Chunks decoded per forward pass, at most: on CPU the transformers engine decodes at most 8 at a time (host memory), and audio past 10 minutes goes in sections of at most 8 per pass.")
    assisted: bool | Literal["auto"] = Field(False, description="Speculative decoding with the assistant model (greedy). 'auto': for audio that fits one window, speculative or plain greedy decoding, whichever this deployment has timed faster on live requests (same text either way); the request's own decoding, batched, for longer audio.")
    chunk_length_s: float = Field(30.0, gt=0, le=30, description="Window of chunked long-form decoding.")
    sampling_rate: int = Field(16000, ge=1000, le=384000, description="Rate of raw PCM sample arrays.")
    language: str | None = Field(None, description="Language code or name; None detects it.")
    timestamps: Timestamps = Field(Timestamps.segment, description="none | segment | word")
    diarize: bool | None = Field(None, description="None: diarize when a diarization model is loaded.")
    num_speakers: int | None = Field(None, ge=1, le=64)
    min_speakers: int | None = Field(None, ge=1, le=64)
    max_speakers: int | None = Field(None, ge=1, le=64)
    temperature: float = Field(0.0, ge=0.0, le=1.0, description="0 decodes deterministically; > 0 samples.")
    num_beams: int | None = Field(None, ge=1, le=10, description="Beam width; default 1: greedy with openai-whisper's temperature fallback, on both engines.")
    prompt: str | None = Field(None, max_length=2000, description="Text that conditions the decoder (style, spelling).")
    trim_encoder_window: bool | None = Field(None, description="CTranslate2: encode short audio and seek-on remainders in trimmed windows (see TRIM_ENCODER_WINDOW, checked and redone in full on failure); None: the deployment's TRIM_ENCODER_WINDOW. Live sessions (/v1/realtime) use true: their turns are short and wait for it.")
    known_speakers: dict[str, str | bytes] | list[str] | None = Field(
        None,
        description=f"Name diarized speakers: {{name: <base64 or data-URL audio, {MIN_REFERENCE_SECONDS:g}-{MAX_REFERENCE_SECONDS:g} s of that person>}}, or the names of enrolled voiceprints; up to {MAX_KNOWN_SPEAKERS}.",
    )

    @field_validator("language", mode="before")
    @classmethod
    def _language_code(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto", "detect")):
            return None
        if not isinstance(value, str):
            return value
        key = value.strip().lower().removeprefix("<|").removesuffix("|>")
        if key in LANGUAGES:
            return key
        if key in TO_LANGUAGE_CODE:
            return TO_LANGUAGE_CODE[key]
        raise ValueError(f"unknown language {value!r}; use a code such as 'en', 'fr', 'de' or a name such as 'french'")

    @field_validator("known_speakers")
    @classmethod
    def _speaker_names(cls, value: Any) -> Any:
        if value is None:
            return None
        names = list(value)
        if not names:
            return None
        if len(names) > MAX_KNOWN_SPEAKERS:
            raise ValueError(f"{len(names)} known speakers were given; at most {MAX_KNOWN_SPEAKERS} are allowed")
        if len(set(names)) != len(names):
            raise ValueError("a known speaker is named twice")
        for name in names:
            check_speaker_name(name)
        if isinstance(value, dict):
            empty = [name for name, audio in value.items() if not audio]
            if empty:
                raise ValueError(f"no reference audio for {empty}")
        return value

    @model_validator(mode="after")
    def _consistent_speakers(self) -> "InferenceConfig":
        if self.num_speakers is not None and (self.min_speakers is not None or self.max_speakers is not None):
            raise ValueError("num_speakers cannot be combined with min_speakers/max_speakers")
        if self.min_speakers is not None and self.max_speakers is not None and self.min_speakers > self.max_speakers:
            raise ValueError(f"min_speakers ({self.min_speakers}) is greater than max_speakers ({self.max_speakers})")
        if (self.num_beams or 1) > 1 and self.assisted is True:
            raise ValueError("assisted (speculative) decoding is greedy: it cannot be combined with num_beams > 1")
        if (self.num_beams or 1) > 1 and self.temperature > 0:
            raise ValueError("temperature > 0 samples; it cannot be combined with num_beams > 1")
        if self.diarize is False and any(v is not None for v in (self.num_speakers, self.min_speakers, self.max_speakers)):
            raise ValueError("speaker counts were given but diarize is false")
        if self.diarize is False and self.known_speakers:
            raise ValueError("known_speakers were given but diarize is false")
        return self

    @property
    def speaker_constraints(self) -> dict[str, int]:
        return {k: v for k, v in (("num_speakers", self.num_speakers), ("min_speakers", self.min_speakers), ("max_speakers", self.max_speakers)) if v is not None}

    @classmethod
    def parse(cls, parameters: Any) -> "InferenceConfig":
        """Validate user parameters into a config, with errors that name each bad field."""
        if parameters is None:
            return cls()
        if not isinstance(parameters, dict):
            raise InvalidParameters(f"'parameters' must be a JSON object, got {type(parameters).__name__}")
        return validate_fields(cls, parameters)


def check_speaker_name(name: str) -> str:
    """A person's name as it will label speaker turns: ValueError saying what is wrong otherwise."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"speaker name {name!r} must be non-empty, without leading or trailing spaces")
    if len(name) > MAX_SPEAKER_NAME_LENGTH or not name.isprintable():
        raise ValueError(f"speaker name {name[:80]!r} must be printable and at most {MAX_SPEAKER_NAME_LENGTH} characters")
    if re.fullmatch(r"SPEAKER_\d+", name):
        raise ValueError(f"speaker name {name!r} would be mistaken for an unidentified speaker's label")
    return name


def validate_fields(model: type[ModelT], fields: dict) -> ModelT:
    """``model`` from user-sent fields; InvalidParameters (422) naming each bad field otherwise."""
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        raise InvalidParameters(describe_validation_error(error, sorted(model.model_fields))) from None


def describe_validation_error(error: ValidationError, valid_names: list[str]) -> str:
    """One readable line per problem; unknown names list the valid ones (a typo must not pass)."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown parameter {where!r} (valid: {', '.join(valid_names)})")
        else:
            problems.append(f"{where}: {message}" if where else message)
    return "invalid parameters: " + "; ".join(problems)


class ServerSettings(BaseSettings):
    """The HTTP server's own settings (the ``server`` package), read once from environment variables or ``.env``.

    Model choice stays in ``ModelSettings``: the same variables configure the handler on Inference
    Endpoints and in this server.
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    api_key: SecretStr | None = Field(None, description="When set, every route but /health requires `Authorization: Bearer <key>`.")
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1, description="Larger request bodies are refused (413); tt-media-server's cap is 50 MB.")
    max_queue_depth: int = Field(256, ge=0, description="Admitted requests beyond the workers' (waiting for a worker); as many more may wait to be admitted, then 503 + Retry-After.")
    max_audio_seconds_in_flight: float = Field(8 * 3600, gt=0, description="Seconds of audio admitted requests may hold together; a longer single file gets 413.")
    memory_budget_gib: float | None = Field(None, gt=0, description="Memory (RSS) the server may use: a request whose body and decoded audio do not fit beside the loaded models and each worker's working memory waits or gets 503 (413 if it never could); default 80 % of the machine's or container's memory.")
    admission_wait_s: float = Field(10.0, ge=0, description="How long a request whose body is in may wait to be admitted before 503 + Retry-After.")
    tt_admission_wait_s: float = Field(900.0, ge=0, description="The same wait on the tt-media-server JSON route: lmms-eval's whisper_tt sends every item at once and never retries a 503.")
    body_read_timeout_s: float = Field(120.0, gt=0, description="Deadline for receiving a request body, from the request's start (408 after it): trickling uploads cannot hold the server.")
    shutdown_grace_s: float = Field(25.0, ge=0, description="On SIGTERM (`python -m server`): time running requests get to finish before they are answered 503; keep it under the orchestrator's kill delay (Kubernetes: 30 s).")
    inference_workers: int = Field(1, ge=1, description="Threads running the handler; it is not guaranteed thread-safe, so 1 unless you know better.")
    micro_batch_size: int = Field(8, ge=1, description="Requests waiting together are transcribed in one batch of at most this many (1: one at a time).")
    retry_after_seconds: int = Field(5, ge=1, description="Retry-After sent with 503 (queue full, models loading).")
    cors_origins: str = Field("", description="Comma-separated origins allowed by CORS; empty disables CORS.")
    realtime_max_sessions: int = Field(16, ge=0, description="Live transcription sessions (/v1/realtime) open at once; more are refused with an error event (0: the route refuses every session).")
    realtime_idle_timeout_s: float = Field(60.0, gt=0, description="A live session that sends nothing for this long is closed (with an error event saying why).")
    realtime_max_turn_s: float = Field(30.0, ge=1, le=600, description="A live turn (speech, or audio before a manual commit) longer than this is committed at this length; it bounds each session's audio buffer (30 s: one Whisper window).")
    realtime_partial_interval_s: float = Field(1.0, ge=0, description="While someone speaks, their turn so far is decoded again about this often for partial text (delta events), only when the engine has nothing else to do; 0: text only when a turn ends.")

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: Any) -> Any:
        # API_KEY="" must mean "no auth", not "the empty string is the key".
        return None if isinstance(value, str) and not value.strip() else value
