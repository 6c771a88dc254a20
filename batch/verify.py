"""``python -m batch.verify INPUT… --output DIR [same model flags]``: the baseline a batch job is
judged against. One in-process ``EndpointHandler`` transcribes every listed item, one at a time;
each item's text is compared with the job's row, and the handler's throughput is reported."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from batch.results import finished_rows
from batch.sources import discover
from config import ModelSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch.verify", description=__doc__)
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--output", "-o", type=Path, required=True, help="the batch job's result folder")
    parser.add_argument("--format", dest="output_format", choices=("jsonl", "parquet"), default="jsonl")
    parser.add_argument("--asr-model")
    parser.add_argument("--asr-backend", choices=("transformers", "ctranslate2"))
    parser.add_argument("--diarization-model")
    parser.add_argument("--parameters", default="{}")
    parser.add_argument("--namespace-ids", action="store_true")
    args = parser.parse_args(argv)

    from handler import EndpointHandler

    overrides = {k: v for k, v in (("asr_model", args.asr_model), ("asr_backend", args.asr_backend), ("diarization_model", args.diarization_model)) if v is not None}
    handler = EndpointHandler(str(Path(__file__).resolve().parent.parent), settings=ModelSettings(**overrides))
    parameters = json.loads(args.parameters)
    rows = {row["id"]: row for row in finished_rows(args.output, args.output_format).to_pylist()}
    items = discover(args.inputs, namespace_ids=args.namespace_ids).files
    mismatches, missing, audio_seconds = [], [], 0.0
    started = time.perf_counter()
    for item in items:
        try:
            expected = handler({"inputs": Path(item["source"]).read_bytes(), "parameters": parameters})
            expected_text, audio_seconds = expected["text"], audio_seconds + expected["duration"]
        except Exception as error:  # the job must have an error row for it
            expected_text = None
            print(f"{item['id']}: handler error {type(error).__name__}: {error}", file=sys.stderr)
        row = rows.get(item["id"])
        if row is None:
            missing.append(item["id"])
        elif row["text"] != expected_text:
            mismatches.append({"id": item["id"], "handler": expected_text, "batch": row["text"], "batch_error": row["error"]})
    wall = time.perf_counter() - started
    report = {
        "items": len(items),
        "same_text": len(items) - len(mismatches) - len(missing),
        "mismatches": mismatches,
        "missing": missing,
        "handler_wall_seconds": round(wall, 2),
        "handler_audio_hours_per_hour": round(audio_seconds / wall, 2) if wall else 0.0,
    }
    print(json.dumps(report, ensure_ascii=False))
    return 0 if not mismatches and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
