"""Enrolled speakers' voiceprints, kept in SQLite (``VOICEPRINTS_DB``) across restarts.

Each row holds a unit-length embedding and the id of the embedding model that made it
(``diarization.speaker_identification.model_fingerprint``): embeddings of different models live in different spaces, so a
voiceprint is only ever used with the model that made it, and a mismatch is refused, never compared.
The file is created on the first enrolment; one connection per call keeps the store safe to use
from the server's worker threads.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from config import check_speaker_name
from errors import InvalidParameters, SpeakerNotFound, VoiceprintMismatch

SCHEMA = """
CREATE TABLE IF NOT EXISTS voiceprints (
    name TEXT PRIMARY KEY,
    embedding BLOB NOT NULL,      -- float64, unit length
    dimension INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    enrolled_at REAL NOT NULL     -- unix time
)
"""


@dataclass(frozen=True)
class Voiceprint:
    """One person's voice: a unit-length embedding and the embedding model that made it."""

    name: str
    embedding: np.ndarray
    model_id: str


class EnrolledSpeaker(BaseModel):
    """What the store says about one enrolled speaker (never the embedding itself)."""

    name: str
    model_id: str = Field(description="The embedding model that made the voiceprint.")
    dimension: int
    enrolled_at: float = Field(description="Unix time of the (latest) enrolment.")


class VoiceprintStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def _connect(self, create: bool = False) -> Iterator[sqlite3.Connection | None]:
        if not create and not self.path.exists():
            yield None  # nothing enrolled yet: reading must not create the file
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=10)) as connection:
            with connection:  # one transaction: committed on success, rolled back on error
                connection.execute(SCHEMA)
                yield connection

    def enroll(self, voiceprint: Voiceprint) -> EnrolledSpeaker:
        """Store (or replace) ``voiceprint`` under its name."""
        try:
            check_speaker_name(voiceprint.name)
        except ValueError as error:
            raise InvalidParameters(str(error)) from None
        embedding = np.asarray(voiceprint.embedding, dtype=np.float64)
        enrolled = EnrolledSpeaker(name=voiceprint.name, model_id=voiceprint.model_id, dimension=embedding.size, enrolled_at=round(time.time(), 3))
        with self._connect(create=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO voiceprints (name, embedding, dimension, model_id, enrolled_at) VALUES (?, ?, ?, ?, ?)",
                (enrolled.name, embedding.tobytes(), enrolled.dimension, enrolled.model_id, enrolled.enrolled_at),
            )
        return enrolled

    def list(self) -> list[EnrolledSpeaker]:
        with self._connect() as db:
            rows = db.execute("SELECT name, model_id, dimension, enrolled_at FROM voiceprints ORDER BY name").fetchall() if db else []
        return [EnrolledSpeaker(name=name, model_id=model_id, dimension=dimension, enrolled_at=enrolled_at) for name, model_id, dimension, enrolled_at in rows]

    def delete(self, name: str) -> None:
        with self._connect() as db:
            deleted = db.execute("DELETE FROM voiceprints WHERE name = ?", (name,)).rowcount if db else 0
        if not deleted:
            raise SpeakerNotFound(f"no speaker named {name!r} is enrolled")

    def get(self, names: list[str], model_id: str) -> list[Voiceprint]:
        """Voiceprints of ``names``, in that order, usable with the embedding model ``model_id``."""
        with self._connect() as db:
            rows = db.execute(f"SELECT name, embedding, model_id FROM voiceprints WHERE name IN ({', '.join('?' * len(names))})", names).fetchall() if db and names else []
        found = {name: (embedding, made_by) for name, embedding, made_by in rows}
        missing = [name for name in names if name not in found]
        if missing:
            raise SpeakerNotFound(f"no speaker enrolled as {', '.join(map(repr, missing))}; enroll them first (POST /v1/speakers) or send reference audio as known_speakers: {{name: <audio>}}")
        stale = [name for name in names if found[name][1] != model_id]
        if stale:
            raise VoiceprintMismatch(
                f"the voiceprints of {', '.join(map(repr, stale))} were made by embedding model {found[stale[0]][1]!r}, not by this endpoint's {model_id!r}: "
                "embeddings of different models cannot be compared; enroll them again"
            )
        return [Voiceprint(name=name, embedding=np.frombuffer(found[name][0], dtype=np.float64), model_id=model_id) for name in names]
