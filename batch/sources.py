"""What a batch job transcribes: manifests, folders of audio files, HF-datasets-style data sets.

Every source becomes rows of one shape, ``{"id", "source", "audio"}``: ``source`` is the file's
path (read by the worker that transcribes it, so on a cluster it must be on a shared file system)
or where in a data set the audio came from; ``audio`` holds the file's bytes when the data set
carries them (HF's ``Audio`` feature stores ``{"bytes", "path"}``), else is empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".mka", ".amr"})


class SourceError(ValueError):
    """An input the job cannot read at all (as opposed to one bad audio file, which is an error row)."""


@dataclass
class Sources:
    """Input rows: files by path, data-set rows with their bytes."""

    files: list[dict[str, Any]] = field(default_factory=list)


def discover(inputs: list[str], id_column: str = "id", audio_column: str = "audio", namespace_ids: bool = False) -> Sources:
    """Resolve each input: a manifest (``*.jsonl`` or a folder holding ``manifest.jsonl``), a data
    set saved with ``datasets.save_to_disk``, Parquet files with an audio column (the Hub's layout),
    or any other folder (its audio files, recursively). ``namespace_ids``: listed items' ids are
    prefixed with their input's name (``asr_short/jfk``), for inputs whose ids collide."""
    sources = Sources()
    for name in inputs:
        path = Path(name)
        listed = len(sources.files)
        if not path.exists():
            raise SourceError(f"input {name!r} does not exist")
        if path.is_file() and path.suffix == ".jsonl":
            sources.files += read_manifest(path)
        elif path.is_dir() and (path / "manifest.jsonl").is_file():
            sources.files += read_manifest(path / "manifest.jsonl")
        elif path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
            sources.files += hf_saved_dataset(path, id_column, audio_column)
        elif path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet"))):
            sources.files += parquet_dataset(path, id_column, audio_column)
        elif path.is_dir():
            sources.files += scan_folder(path)
        elif path.suffix.lower() in AUDIO_EXTENSIONS:
            sources.files.append({"id": path.stem, "source": str(path.resolve()), "audio": None})
        else:
            raise SourceError(f"input {name!r} is neither a manifest (.jsonl), a folder, a data set nor an audio file")
        if namespace_ids:
            prefix = (path.parent.name if path.name == "manifest.jsonl" else path.stem if path.is_file() else path.name)
            for row in sources.files[listed:]:
                row["id"] = f"{prefix}/{row['id']}"
    check_unique([row["id"] for row in sources.files])
    return sources


def read_manifest(manifest: Path) -> list[dict[str, Any]]:
    """JSON lines with ``audio`` (a path, relative to the manifest's folder) and an optional ``id``."""
    rows = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise SourceError(f"{manifest}:{number}: not JSON ({error.msg})") from None
        audio = entry.get("audio") if isinstance(entry, dict) else None
        if not isinstance(audio, str) or not audio:
            raise SourceError(f"{manifest}:{number}: a manifest row needs an 'audio' path")
        path = (manifest.parent / audio).resolve()
        rows.append({"id": str(entry.get("id") or Path(audio).with_suffix("").as_posix()), "source": str(path), "audio": None})
    return rows


def scan_folder(folder: Path) -> list[dict[str, Any]]:
    """Audio files under ``folder``; the id is the path relative to it, without the extension."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise SourceError(f"folder {str(folder)!r} holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    return [{"id": p.relative_to(folder).with_suffix("").as_posix(), "source": str(p.resolve()), "audio": None} for p in files]


def check_unique(ids: list[str]) -> None:
    seen: set[str] = set()
    duplicates = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    if duplicates:
        raise SourceError(f"item ids must be unique across the inputs (results and resumption are keyed by id); repeated: {duplicates[:10]}; --namespace-ids prefixes each id with its input's name")


def hf_saved_dataset(path: Path, id_column: str, audio_column: str) -> list[dict[str, Any]]:
    """A data set written by ``datasets.Dataset.save_to_disk``; audio is kept undecoded (file bytes)."""
    import datasets

    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        raise SourceError(f"{path} holds several splits ({', '.join(dataset)}): pass one split's folder")
    if audio_column not in dataset.column_names:
        raise SourceError(f"data set {path} has no {audio_column!r} column (columns: {dataset.column_names}); use --audio-column")
    if isinstance(dataset.features[audio_column], datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    return to_rows(dataset.data.table, str(path), id_column, audio_column)


def parquet_dataset(path: Path, id_column: str, audio_column: str) -> list[dict[str, Any]]:
    """Parquet files whose audio column is HF's ``{"bytes", "path"}`` struct (the Hub's layout)."""
    import pyarrow.parquet as pq

    rows = []
    for file in [path] if path.is_file() else sorted(path.rglob("*.parquet")):
        table = pq.read_table(file)
        if audio_column not in table.column_names:
            raise SourceError(f"{file} has no {audio_column!r} column (columns: {table.column_names}); use --audio-column")
        rows += to_rows(table, str(file), id_column, audio_column)
    return rows


def to_rows(table, origin: str, id_column: str, audio_column: str) -> list[dict[str, Any]]:
    """A data set's rows as ``{"id", "source", "audio"}``; ids default to the audio's own path.

    Read in the driver and handed to Ray Data as items: Ray Data's own readers of these tables
    (``from_huggingface``, ``from_arrow``) crashed a worker on this stack (Ray 2.60, datasets 5.2,
    pyarrow 26) and left the job hanging."""
    audio = table.column(audio_column).to_pylist()
    ids = table.column(id_column).to_pylist() if id_column in table.column_names else [None] * len(audio)
    rows = []
    for value, item_id in zip(audio, ids):
        inner_path = value.get("path") if isinstance(value, dict) else None
        blob = value.get("bytes") if isinstance(value, dict) else value if isinstance(value, bytes) else None
        if item_id is None and not inner_path:
            raise SourceError(f"{origin}: a row has neither an {id_column!r} column nor an audio path to name it by; use --id-column")
        if blob is None:
            raise SourceError(f"{origin}: row {item_id or inner_path} carries no audio bytes")
        rows.append({"id": str(item_id) if item_id is not None else inner_path, "source": f"{origin}#{inner_path or item_id}", "audio": blob})
    return rows
