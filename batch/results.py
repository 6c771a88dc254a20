"""Result rows: one fixed Arrow schema for JSONL and Parquet, success and error rows alike, and
reading back what earlier runs already wrote (to resume without redoing an item)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import TranscriptionResponse

logger = logging.getLogger(__name__)

SEGMENT = pa.struct([("text", pa.string()), ("start", pa.float64()), ("end", pa.float64()), ("speaker", pa.string())])
TURN = pa.struct([("speaker", pa.string()), ("text", pa.string()), ("start", pa.float64()), ("end", pa.float64())])
WORD = pa.struct([("text", pa.string()), ("start", pa.float64()), ("end", pa.float64()), ("speaker", pa.string())])

# A fixed schema: a block of error rows only must still write the same columns and types as any other.
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("duration", pa.float64()),
        ("segments", pa.list_(SEGMENT)),
        ("speakers", pa.list_(TURN)),
        ("words", pa.list_(WORD)),
        ("num_speakers", pa.int32()),
        ("strategy", pa.string()),
        ("warnings", pa.list_(pa.string())),
        ("error", pa.string()),
        ("error_kind", pa.string()),
        ("seconds", pa.float64()),
        ("worker", pa.string()),
    ]
)

FORMATS = {"jsonl": ".json", "parquet": ".parquet"}  # Ray Data's own file extensions


def success_row(item_id: str, source: str, response: TranscriptionResponse, seconds: float, worker: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "source": source,
        "text": response.text,
        "language": response.language,
        "duration": response.duration,
        "segments": [{"text": c.text, "start": c.timestamp[0], "end": c.timestamp[1], "speaker": c.speaker} for c in response.chunks],
        "speakers": [{"speaker": t.speaker, "text": t.text, "start": t.timestamp[0], "end": t.timestamp[1]} for t in response.speakers],
        "words": None if response.words is None else [w.model_dump() for w in response.words],
        "num_speakers": response.num_speakers,
        "strategy": response.strategy,
        "warnings": response.warnings,
        "error": None,
        "error_kind": None,
        "seconds": round(seconds, 3),
        "worker": worker,
    }


def error_row(item_id: str, source: str, error: BaseException, seconds: float, worker: str) -> dict[str, Any]:
    kind = getattr(error, "kind", None) or type(error).__name__
    return {
        "id": item_id,
        "source": source,
        "text": None,
        "language": None,
        "duration": None,
        "segments": [],
        "speakers": [],
        "words": None,
        "num_speakers": 0,
        "strategy": None,
        "warnings": [],
        "error": str(error) or type(error).__name__,
        "error_kind": kind,
        "seconds": round(seconds, 3),
        "worker": worker,
    }


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def finished_rows(output_dir: Path, output_format: str) -> pa.Table:
    """Every complete result an earlier run wrote under ``output_dir``.

    A run killed while writing can leave one file cut short (Ray Data writes in place): such a file
    is removed, so its items count as not done and are transcribed again, instead of a broken file
    poisoning every later reader of the folder."""
    tables = []
    if not output_dir.is_dir():
        return to_table([])
    suffix = FORMATS[output_format]
    for path in sorted(output_dir.glob(f"*{suffix}")):
        try:
            tables.append(_read(path, output_format))
        except (OSError, ValueError, pa.ArrowException) as error:
            logger.warning("removing %s: an incomplete result file from an interrupted run (%s); its items will be redone", path, error)
            path.unlink()
    return pa.concat_tables(tables) if tables else to_table([])


def _read(path: Path, output_format: str) -> pa.Table:
    if output_format == "parquet":
        return pq.read_table(path, schema=SCHEMA)
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("the last line is cut short")
    return to_table([_json_row(line) for line in text.splitlines() if line.strip()])


def _json_row(line: str) -> dict[str, Any]:
    row = json.loads(line)
    if not isinstance(row, dict) or "id" not in row:
        raise ValueError("a line is not a result row")
    return {name: row.get(name) for name in SCHEMA.names}
