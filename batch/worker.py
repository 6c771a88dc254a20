"""The Ray Data actor: loads the handler once, then turns batches of input rows into result rows."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from batch.results import error_row, success_row, to_table
from config import InferenceConfig, ModelSettings
from errors import AudioDecodeError

REPO_DIR = Path(__file__).resolve().parent.parent


class Transcribe:
    """Callable class for ``Dataset.map_batches``: Ray Data keeps a pool of these actors, each
    with its own ``EndpointHandler`` (models loaded once per actor, not per batch)."""

    def __init__(self, settings: dict[str, Any], parameters: dict[str, Any]):
        from handler import EndpointHandler

        self.handler = EndpointHandler(str(REPO_DIR), settings=ModelSettings(_env_file=None, **settings))
        self.config = InferenceConfig.parse(parameters)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        ids, sources, blobs = (batch.column(name).to_pylist() for name in ("id", "source", "audio"))
        rows: list[dict[str, Any] | None] = [None] * len(ids)
        requests, indices = [], []
        for index, (item_id, source, blob) in enumerate(zip(ids, sources, blobs)):
            try:
                requests.append((blob if blob is not None else read_file(source), self.config))
                indices.append(index)
            except Exception as error:
                rows[index] = error_row(item_id, source, error, 0.0, self.worker)
        try:
            results = self.handler.transcribe_batch(requests) if requests else []
        except Exception as error:  # the handler keeps failures per request; this is the unexpected rest
            results = [error] * len(requests)
        seconds = (time.perf_counter() - started) / max(len(requests), 1)
        for index, result in zip(indices, results):
            if isinstance(result, BaseException):
                rows[index] = error_row(ids[index], sources[index], result, seconds, self.worker)
            else:
                rows[index] = success_row(ids[index], sources[index], result, seconds, self.worker)
        return to_table(rows)  # type: ignore[arg-type]


def read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise AudioDecodeError(f"cannot read audio file {path}: {error.strerror or error}") from None
