"""tt-media-server's JSON audio API, as lmms-eval's ``whisper_tt`` client sends it, with
``"stream": true`` answered as NDJSON lines ``{"text", "chunk_id"}`` ending with the full text."""

from __future__ import annotations


from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from config import InferenceConfig, Task
from errors import AudioDecodeError, EndpointError
from schemas import TranscriptionResponse
from server import render
from server.bodies import read_json, validated
from server.dependencies import ServerState
from server.streaming import StreamText, stream_response
from server.transcription import transcribe


class TTTranscriptionRequest(BaseModel):
    """tt-media-server's JSON body, as lmms-eval's whisper_tt client sends it: ``{"file": b64 WAV, "stream": false}``."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="base64 audio file (whisper_tt: a float32 IEEE WAV at 16 kHz)")
    stream: bool = Field(False, description="true: NDJSON lines {text, chunk_id} as segments are decoded, the last one with the full text.")
    response_format: str | None = Field(None, description="Accepted for compatibility; the answer is always JSON.")
    is_preprocessing_enabled: bool = Field(True, description="Accepted for compatibility (tt-media-server's VAD switch).")
    perform_diarization: bool = False
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def inference_config(self, task: Task) -> InferenceConfig:
        parameters = {"task": task.value, "language": self.language, "prompt": self.prompt or None, "temperature": self.temperature,
                      "diarize": self.perform_diarization, "num_speakers": self.num_speakers, "min_speakers": self.min_speakers, "max_speakers": self.max_speakers}
        return InferenceConfig.parse({k: v for k, v in parameters.items() if v is not None})


async def handle(request: Request, state: ServerState, task: Task) -> Response:
    body = validated(TTTranscriptionRequest, await read_json(request))
    config = body.inference_config(task)
    try:
        if body.stream:
            return await stream_response(request, state, body.file, config, NDJSONText(body.perform_diarization), media_type="application/x-ndjson",
                                         admission_wait_s=state.settings.tt_admission_wait_s)
        response = await transcribe(request, state, body.file, config, admission_wait_s=state.settings.tt_admission_wait_s)
    except AudioDecodeError as error:
        raise naming_file(error) from None
    return JSONResponse(render.tt(response, body.perform_diarization))


def naming_file(error: AudioDecodeError) -> AudioDecodeError:
    """The audio decoder names the HF contract's field; here the audio travels in ``file``."""
    return AudioDecodeError(str(error).replace("'inputs'", "'file'"))


class NDJSONText(StreamText):
    """``{"text": <new text>, "chunk_id": n}`` per delta; the last line carries the full text and
    ``"final": true`` (with duration, language, and segments/speakers when diarized)."""

    def __init__(self, diarized: bool):
        super().__init__()
        self.diarized = diarized
        self.chunk_id = 0

    def text(self, delta: str) -> bytes:
        line = render.ndjson({"text": delta, "chunk_id": self.chunk_id})
        self.chunk_id += 1
        return line

    def done(self, response: TranscriptionResponse) -> bytes:
        return render.ndjson({**render.tt(response, self.diarized), "chunk_id": self.chunk_id, "final": True})

    def error(self, error: EndpointError, message: str) -> bytes:
        if isinstance(error, AudioDecodeError):
            message = str(naming_file(AudioDecodeError(message)))
        return render.ndjson(render.stream_error(error, message))


