"""Evaluation items from a JSONL manifest, a folder of audio, or a Hugging Face dataset.

Audio is decoded lazily (``load_audio``), so a large set never sits in memory at once; it comes
out as 16 kHz mono float32, the rate Whisper works at.
(Named ``data`` rather than ``datasets`` so it never shadows the Hugging Face package.)
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

SAMPLING_RATE = 16000
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")


@dataclass(frozen=True)
class EvalItem:
    id: str
    audio: Path | bytes  # a file, or an encoded file's bytes (HF datasets)
    reference: str | None = None  # None: no reference, so no WER (robustness/latency only)
    rttm: Path | None = None
    uem: Path | None = None


def load_audio(item: EvalItem) -> np.ndarray:
    """The item's audio as 16 kHz mono float32 (downmixed, then resampled with soxr)."""
    source = io.BytesIO(item.audio) if isinstance(item.audio, bytes) else item.audio
    samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != SAMPLING_RATE:
        mono = soxr.resample(mono, rate, SAMPLING_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def load_items(source: str, *, split: str = "test", config: str | None = None, audio_column: str = "audio", text_column: str = "text") -> list[EvalItem]:
    """Items from a ``.jsonl`` manifest, a folder of audio, or (otherwise) a Hugging Face dataset
    name or ``save_to_disk`` folder."""
    path = Path(source)
    if path.suffix == ".jsonl":
        return load_manifest(path)
    if path.is_dir() and not (path / "dataset_dict.json").exists() and not (path / "state.json").exists():
        return load_folder(path)
    return load_hf_dataset(source, split=split, config=config, audio_column=audio_column, text_column=text_column)


def load_manifest(manifest: Path) -> list[EvalItem]:
    """JSON lines with ``audio`` (relative to the manifest's folder), optional ``id``, ``text``, ``rttm``, ``uem``."""
    items = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        audio = manifest.parent / row["audio"]
        items.append(EvalItem(
            id=str(row.get("id") or audio.stem),
            audio=audio,
            reference=row.get("text"),
            rttm=manifest.parent / row["rttm"] if row.get("rttm") else None,
            uem=manifest.parent / row["uem"] if row.get("uem") else None,
        ))
    return items


def load_folder(folder: Path) -> list[EvalItem]:
    """Audio files under ``folder``; references from ``<name>.txt`` beside each file or from
    LibriSpeech ``*.trans.txt`` (``<id> <TEXT>`` per line); diarization from ``<name>.rttm``."""
    transcripts: dict[str, str] = {}
    for trans in folder.rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            utterance, _, text = line.strip().partition(" ")
            if utterance:
                transcripts[utterance] = text
    items = []
    for audio in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        text_file, rttm = audio.with_suffix(".txt"), audio.with_suffix(".rttm")
        reference = text_file.read_text().strip() if text_file.exists() else transcripts.get(audio.stem)
        items.append(EvalItem(id=audio.stem, audio=audio, reference=reference, rttm=rttm if rttm.exists() else None))
    return items


def load_hf_dataset(name: str, *, split: str = "test", config: str | None = None, audio_column: str = "audio", text_column: str = "text") -> list[EvalItem]:
    """A ``datasets`` dataset with an audio column, from a ``save_to_disk`` folder or the hub cache
    (set ``HF_DATASETS_OFFLINE=1`` to never touch the network)."""
    import datasets  # heavy import, only for this source

    if Path(name).is_dir():
        dataset = datasets.load_from_disk(name)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[split]
    else:
        dataset = datasets.load_dataset(name, config, split=split)
    # Undecoded column: we decode the bytes ourselves, independent of the datasets audio backend.
    dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    items = []
    for index, row in enumerate(dataset):
        audio = row[audio_column]
        items.append(EvalItem(
            id=str(row.get("id", index)),
            audio=audio["bytes"] if audio.get("bytes") else Path(audio["path"]),
            reference=row.get(text_column),
        ))
    return items


def shard(items: list[EvalItem], rank: int, world_size: int) -> list[EvalItem]:
    """This process's share: every ``world_size``-th item starting at ``rank``."""
    return items[rank::world_size]
