"""CLI: ``python -m eval_client DATASET --base-url URL --protocol hf|openai|tt [--out DIR]``.

Multi-process: ``torchrun --nproc-per-node 4 -m eval_client ...`` (or ``accelerate launch -m
eval_client ...``) shards the items by rank; rank 0 merges the shards and writes the reports.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from eval_client.client import ASRClient, ClientConfig
from eval_client.data import load_items
from eval_client.report import console_table, write_reports
from eval_client.runner import distributed_rank, evaluate_sharded


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` with a JSON value when it parses (numbers, true/false, lists), else a string."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--param wants key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval_client", description="Score an ASR endpoint: WER/CER, DER/JER, latency, failures.")
    p.add_argument("dataset", help="a .jsonl manifest, a folder of audio (+ .txt / *.trans.txt), or a Hugging Face dataset name or save_to_disk folder")
    p.add_argument("--base-url", help="endpoint root (default: $OPENAI_API_BASE or http://127.0.0.1:8000)")
    p.add_argument("--protocol", choices=["hf", "openai", "tt", "realtime"], default="hf", help="hf: POST / JSON; openai: /v1/audio/transcriptions multipart; tt: /audio/transcriptions JSON; realtime: /v1/realtime WebSocket, the file streamed live (docs/realtime.md)")
    p.add_argument("--api-key", help="bearer token (default: $OPENAI_API_KEY or $HF_TOKEN; prefer the environment)")
    p.add_argument("--split", default="test")
    p.add_argument("--config", help="Hugging Face dataset configuration")
    p.add_argument("--audio-column", default="audio")
    p.add_argument("--text-column", default="text")
    p.add_argument("--limit", type=int, help="only the first N items")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per attempt")
    p.add_argument("--retries", type=int, default=3, help="retries after the first attempt (timeouts, connection errors, 429, 5xx)")
    p.add_argument("--backoff", type=float, default=0.5, help="base of the exponential backoff, seconds")
    p.add_argument("--wav", choices=["float32", "int16"], default="float32", help="WAV sample format sent")
    p.add_argument("--language")
    p.add_argument("--model", default="whisper-1", help="the OpenAI protocol's model field")
    p.add_argument("--param", type=parse_param, action="append", default=[], metavar="KEY=VALUE", help="extra request parameter (repeatable), e.g. --param diarize=true")
    p.add_argument("--stream", action="store_true", help="streamed answers (openai: SSE, tt: NDJSON); reports time to first text beside latency")
    p.add_argument("--pace", type=float, default=1.0, help="realtime: audio seconds streamed per second (1: real time, 0: as fast as the server reads)")
    p.add_argument("--live-tail", type=float, default=1.0, help="realtime: seconds of silence streamed after each file")
    p.add_argument("--collar", type=float, default=0.0, help="DER/JER forgiveness collar, seconds")
    p.add_argument("--out", type=Path, help="report folder (default: reports/eval-<protocol>-<time>)")
    p.add_argument("--fail-on-error", action="store_true", help="exit 1 when any request finally failed")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if distributed_rank()[1] > 1 and not args.out:
        parser.error("--out is required with several processes: the shards meet there")
    settings: dict[str, Any] = dict(
        protocol=args.protocol, timeout_s=args.timeout, max_retries=args.retries, backoff_base_s=args.backoff,
        concurrency=args.concurrency, wav_encoding=args.wav, language=args.language, model=args.model, parameters=dict(args.param), stream=args.stream, pace=args.pace, live_tail_s=args.live_tail,
    )
    if args.base_url:
        settings["base_url"] = args.base_url
    if args.api_key:
        settings["api_key"] = args.api_key
    client = ASRClient(ClientConfig(**settings))
    items = load_items(args.dataset, split=args.split, config=args.config, audio_column=args.audio_column, text_column=args.text_column)
    if args.limit:
        items = items[: args.limit]
    out_dir = args.out or Path("reports") / f"eval-{args.protocol}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = evaluate_sharded(client, items, out_dir, dataset=args.dataset, collar=args.collar)
    if report is None:  # a non-zero rank: its shard is on disk for rank 0
        return 0
    paths = write_reports(report, out_dir)
    print(console_table(report))
    print(f"reports: {paths['json']}  {paths['markdown']}", file=sys.stderr)
    return 1 if args.fail_on_error and report.summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
