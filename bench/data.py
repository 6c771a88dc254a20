"""The shared dev data: where it is and how its manifests read, in one place for the benchmarks,
the tuning scripts and the tests.

It sits beside the repository (``../shared/data``); ``ASR_DATA_DIR`` points elsewhere. The variable
is read when asked, not at import, so a shell or a test can set it first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
PATH_FIELDS = ("audio", "rttm", "uem", "stm")


def data_dir() -> Path:
    return Path(os.environ.get("ASR_DATA_DIR", REPO_DIR.parent / "shared" / "data"))


def manifest_rows(name: str, root: Path | None = None) -> list[dict]:
    """Rows of ``<root>/<name>/manifest.jsonl`` (root: :func:`data_dir`), with the file fields
    (``audio``, ``rttm``, ``uem``, ``stm``) made absolute paths, as strings."""
    folder = (root or data_dir()) / name
    manifest = folder / "manifest.jsonl"
    if not manifest.exists():
        raise FileNotFoundError(f"dev data not found at {manifest}; set ASR_DATA_DIR")
    rows = []
    for line in manifest.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            for key in PATH_FIELDS:
                if row.get(key):
                    row[key] = str(folder / row[key])
            rows.append(row)
    return rows
