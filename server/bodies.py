"""Reading request bodies (JSON, multipart, raw audio) into Python values, with clear 4xx errors for
anything unreadable. Protocol meaning is the routers' job; this module only reads."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from config import validate_fields
from errors import BadRequest, EndpointError

MAX_FORM_FIELDS = 64
# A text field may hold a data-URL audio reference (known_speaker_references[]): 10 s of 48 kHz
# stereo WAV is 2.6 MB in base64, over Starlette's 1 MB default. The upload limit bounds the body.
MAX_FORM_FIELD_BYTES = 8 * 1024 * 1024
_NESTED_FIELD = re.compile(r"^(\w+)\[(\w*)\]$")  # name[] (a list item) or name[key] (an object member)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def body_bytes(request: Request) -> int:
    """The body's size as its Content-Length declares it (0 when chunked: BodyLimits bounds those)."""
    length = request.headers.get("content-length", "")
    return int(length) if length.isdigit() else 0


def parse_json(raw: bytes | str, what: str = "the body") -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRequest(f"{what} is not valid JSON ({error})") from None
    except RecursionError:  # the JSON parser recurses per nesting level
        raise BadRequest(f"{what} is nested too deeply to be a request") from None


async def read_json(request: Request) -> Any:
    return parse_json(await request.body())


async def read_form(request: Request) -> tuple[bytes, dict[str, Any]]:
    """A multipart body → (the ``file`` part's bytes, the other fields). ``name[]`` fields become
    lists and ``name[key]`` fields objects, as the openai SDK sends arrays and objects."""
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FORM_FIELD_BYTES)
    except (EndpointError, ClientDisconnect):  # too large, too slow, client gone: already clear
        raise
    except Exception as error:  # malformed multipart (python-multipart / starlette errors)
        raise BadRequest(f"could not parse the multipart body: {error}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadRequest("the multipart body needs a 'file' part holding the audio")
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key == "file":
                continue
            if not isinstance(value, str):
                raise BadRequest(f"unexpected file part {key!r}; only 'file' carries audio")
            nested = _NESTED_FIELD.match(key)
            if nested and not nested.group(2):
                fields.setdefault(nested.group(1), []).append(value)
            elif nested:
                container = fields.setdefault(nested.group(1), {})
                if not isinstance(container, dict):
                    raise BadRequest(f"field {nested.group(1)!r} was sent both as a value and as an object")
                container[nested.group(2)] = value
            else:
                fields[key] = value
        return await upload.read(), fields
    finally:
        await form.close()  # the spooled upload files


def query_parameters(request: Request) -> dict[str, str] | None:
    # Values stay strings: InferenceConfig's validation converts "24", "true", "0.2".
    return dict(request.query_params) or None


def validated(model: type[BaseModel], fields: Any) -> Any:
    if not isinstance(fields, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(fields).__name__}")
    return validate_fields(model, fields)
