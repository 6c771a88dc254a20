"""The Hugging Face Inference Endpoints contract: ``POST /`` and ``/predict`` with what the HF
runtime accepts. Diarization follows the blog's handler: on whenever a pipeline is loaded."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from config import InferenceConfig
from errors import InvalidParameters, UnsupportedMediaType
from server.bodies import media_type, parse_json, query_parameters, read_form, read_json
from server.dependencies import ServerState, get_state, ready_handler, require_api_key
from server.transcription import transcribe

router = APIRouter(dependencies=[Depends(require_api_key), Depends(ready_handler)])

BODY_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"type": "object", "properties": {"inputs": {"type": "string", "description": "base64 audio file"}, "parameters": {"type": "object"}}, "required": ["inputs"]}},
            "audio/*": {"schema": {"type": "string", "format": "binary"}, "description": "raw audio; parameters in the query string"},
            "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}, "parameters": {"type": "string", "description": "JSON object"}}, "required": ["file"]}},
        }
    }
}


@router.post("/", summary="HF Inference Endpoints contract", openapi_extra=BODY_DOC)
@router.post("/predict", summary="HF Inference Endpoints contract (alias of POST /)", openapi_extra=BODY_DOC)
async def predict(request: Request, state: ServerState = Depends(get_state)) -> JSONResponse:
    inputs, config = await hf_request(request)
    response = await transcribe(request, state, inputs, config)
    return JSONResponse(response.model_dump(mode="json"))


async def hf_request(request: Request) -> tuple[Any, InferenceConfig]:
    """What the HF runtime accepts: JSON ``{"inputs", "parameters"}``, a raw audio body with
    parameters in the query string, or (as the blog's server) multipart ``file`` + ``parameters``."""
    kind = media_type(request)
    if kind == "application/json":
        from handler import parse_request  # the handler module pulls in torch: only when a request needs it

        body = await read_json(request)
        if isinstance(body, dict) and "parameters" not in body and request.query_params:
            body = {**body, "parameters": query_parameters(request)}
        return parse_request(body)
    if kind == "multipart/form-data":
        audio, fields = await read_form(request)
        unknown = set(fields) - {"parameters"}
        if unknown:
            raise InvalidParameters(f"unknown multipart field(s) {sorted(unknown)}; send 'file' and 'parameters' (a JSON object)")
        parameters = parse_json(fields["parameters"], "'parameters'") if fields.get("parameters") else None
        return audio, InferenceConfig.parse(parameters)
    if kind.startswith(("audio/", "video/")) or kind in ("", "application/octet-stream"):
        return await request.body(), InferenceConfig.parse(query_parameters(request))
    raise UnsupportedMediaType(f"unsupported Content-Type {kind!r}: send application/json, audio/*, application/octet-stream or multipart/form-data")
