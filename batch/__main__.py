"""``python -m batch INPUT… --output DIR``: transcribe (and diarize) many files on a Ray cluster."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from batch.job import JobSpec, run
from batch.sources import SourceError
from config import ModelSettings
from errors import EndpointError


def parse_args(argv: list[str] | None = None) -> JobSpec:
    parser = argparse.ArgumentParser(prog="python -m batch", description=__doc__)
    parser.add_argument("inputs", nargs="+", help="manifest.jsonl (or a folder holding one), a folder of audio files, a datasets.save_to_disk folder, or Parquet with an audio column")
    parser.add_argument("--output", "-o", type=Path, required=True, help="result folder; a rerun over it resumes (finished ids are not redone)")
    parser.add_argument("--format", dest="output_format", choices=("jsonl", "parquet"), default="jsonl")
    parser.add_argument("--workers", type=int, default=2, help="actors, each loading the handler once (default 2)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per actor; also its compute threads (default 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor (0.5 puts two actors on one GPU)")
    parser.add_argument("--batch-size", type=int, default=4, help="items per handler.transcribe_batch call (default 4)")
    parser.add_argument("--address", default=None, help="Ray cluster to join ('auto', 'ray://head:10001'); default: a local one")
    parser.add_argument("--asr-model", help="overrides ASR_MODEL")
    parser.add_argument("--asr-backend", choices=("transformers", "ctranslate2"), help="overrides ASR_BACKEND")
    parser.add_argument("--diarization-model", help="overrides DIARIZATION_MODEL (diarizes every item)")
    parser.add_argument("--parameters", default="{}", help='request parameters for every item, as JSON: \'{"language": "en", "timestamps": "word"}\'')
    parser.add_argument("--id-column", default="id", help="data sets: the column naming each item (default: id, else the audio's path)")
    parser.add_argument("--namespace-ids", action="store_true", help="prefix each listed item's id with its input's name (for inputs whose ids collide); give it on every run over the same output")
    parser.add_argument("--audio-column", default="audio", help="data sets: the audio column (default: audio)")
    args = parser.parse_args(argv)
    try:
        parameters = json.loads(args.parameters)
    except json.JSONDecodeError as error:
        parser.error(f"--parameters is not JSON: {error.msg}")
    overrides = {k: v for k, v in (("asr_model", args.asr_model), ("asr_backend", args.asr_backend), ("diarization_model", args.diarization_model)) if v is not None}
    return JobSpec(
        inputs=args.inputs,
        output=args.output,
        output_format=args.output_format,
        settings=model_settings(overrides),
        parameters=parameters,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        batch_size=args.batch_size,
        address=args.address,
        id_column=args.id_column,
        audio_column=args.audio_column,
        namespace_ids=args.namespace_ids,
    )


def model_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """The deployment's settings (env vars / .env, as the handler reads them) with the CLI's
    overrides, as plain fields handed to every worker: workers on other nodes lack this env.
    HF_TOKEN stays out (Ray keeps task arguments): workers read it from their own environment."""
    return ModelSettings(**overrides).model_dump(exclude={"hf_token"}, exclude_none=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    spec = parse_args(argv)
    try:
        summary = run(spec)
    except (SourceError, EndpointError) as error:
        print(f"python -m batch: error: {error}", file=sys.stderr)
        return 2
    print(summary.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
