"""The handler the server runs: built once by ``handler_factory`` in a background thread while
/health answers 503, then handed to every route."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from errors import InferenceError, ServiceUnavailable
from server.metrics import Metrics

REPO_DIR = Path(__file__).resolve().parent.parent
# Uvicorn configures its own loggers only; this one shows up in its output.
logger = logging.getLogger("uvicorn.error")

HandlerFactory = Callable[[], Any]


def default_handler_factory() -> Any:
    """The real ``EndpointHandler`` on the repository's models (settings from the environment)."""
    from handler import EndpointHandler

    return EndpointHandler(path=str(REPO_DIR))


class HandlerHost:
    def __init__(self, factory: HandlerFactory, metrics: Metrics, secrets: list[str], retry_after_seconds: int):
        self.factory = factory
        self.handler: Any = None
        self.error: str | None = None
        self._metrics = metrics
        self._retry_after = retry_after_seconds
        # Masked in every error message; the handler's token joins once its settings are read.
        self.secrets = [value for value in (*secrets, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")) if value]

    def load(self) -> None:
        try:
            handler = self.factory()
            settings = getattr(handler, "settings", None)
            token = settings.token() if settings is not None and hasattr(settings, "token") else None
            if token:
                self.secrets.append(token)
            self.handler = handler
            self._metrics.ready.set(1)
            if settings is not None:
                logger.info("models loaded: ASR %s, assistant %s, diarization %s", settings.asr_model, settings.assistant_model, settings.diarization_model)
        except Exception as error:  # the server stays up to report it on /health
            self.error = self.redact(f"{type(error).__name__}: {error}")
            logger.exception("model loading failed")

    def ready_handler(self) -> Any:
        if self.handler is not None:
            return self.handler
        if self.error:
            raise InferenceError(f"the models failed to load: {self.error}")
        raise ServiceUnavailable("the models are still loading; retry shortly", self._retry_after)

    def redact(self, text: str) -> str:
        for value in self.secrets:
            text = text.replace(value, "***")
        return text
