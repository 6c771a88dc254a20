"""The errors a request can end in, each with the HTTP status it maps to.

One place for every error class and its mapping: each carries the HTTP ``status_code`` it maps to,
a stable ``kind`` (the error type clients and metrics see) and optional response ``headers``. The
handler and the server raise these; the server (``server.render.error_response``) turns them into
responses, and the HF serving runtime (which answers 400 for any exception) shows their message as
it is. Messages name the problem and never carry a token or a stack trace.
"""

from __future__ import annotations


class EndpointError(Exception):
    """Base class; ``status_code`` is what the HTTP server answers."""

    status_code = 500
    kind = "inference_error"
    headers: dict[str, str] | None = None


class InvalidParameters(EndpointError, ValueError):
    status_code = 422
    kind = "invalid_parameters"


class AudioDecodeError(EndpointError, ValueError):
    status_code = 400
    kind = "audio_decode_error"


class UnsupportedMediaType(EndpointError, ValueError):
    status_code = 415
    kind = "unsupported_media_type"


class AudioTooLong(EndpointError, ValueError):
    status_code = 413
    kind = "audio_too_long"


class ModelNotConfigured(EndpointError, ValueError):
    """A request asked for a model the deployment does not have (assistant, diarization)."""

    status_code = 422
    kind = "model_not_configured"


class ModelLoadError(EndpointError, RuntimeError):
    kind = "model_load_error"


class InferenceError(EndpointError, RuntimeError):
    kind = "inference_error"


class RequestCancelled(EndpointError, RuntimeError):
    """The client went away before its result was ready; the work for it was stopped."""

    status_code = 499  # nginx's "client closed request": never sent to anyone, counted apart in metrics
    kind = "client_closed_request"


# --- protocol errors the HTTP server raises -----------------------------------------------------


class BadRequest(EndpointError, ValueError):
    """A body the server cannot read (not JSON, nested too deeply, malformed multipart)."""

    status_code = 400
    kind = "bad_request"


class Unauthorized(EndpointError):
    status_code = 401
    kind = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class NotFound(EndpointError):
    status_code = 404
    kind = "not_found"


class MethodNotAllowed(EndpointError):
    status_code = 405
    kind = "method_not_allowed"

    def __init__(self, message: str, allow: str | None = None):
        super().__init__(message)
        if allow:
            self.headers = {"Allow": allow}


class PayloadTooLarge(EndpointError):
    status_code = 413
    kind = "payload_too_large"


class RequestTimeout(EndpointError):
    """The request body did not arrive within the server's read deadline (a stalled or trickling upload)."""

    status_code = 408
    kind = "request_timeout"
    headers = {"Connection": "close"}  # the rest of the body may still trickle in: nobody reads it


class ServiceUnavailable(EndpointError):
    """Models still loading, the server full or shutting down: the client should come back later."""

    status_code = 503
    kind = "unavailable"

    def __init__(self, message: str, retry_after_seconds: int = 5):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_seconds)}


class QueueFull(ServiceUnavailable):
    kind = "queue_full"


class InvalidSpeakerReference(EndpointError, ValueError):
    """A known speaker's reference audio cannot identify anyone: not audio, too short or long, silent."""

    status_code = 422
    kind = "invalid_speaker_reference"


class SpeakerNotFound(EndpointError, LookupError):
    """A request or a route named a speaker who is not enrolled."""

    status_code = 404
    kind = "speaker_not_found"


class VoiceprintMismatch(EndpointError, ValueError):
    """A stored voiceprint was made by another embedding model than the one loaded: not comparable."""

    status_code = 409
    kind = "voiceprint_model_mismatch"
