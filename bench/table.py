"""The docs' benchmark tables, printed as Markdown from one ``python -m bench`` result file.

    python -m bench.table [bench/results.json]

The figures in docs/benchmarks.md and the README come from here, so they are always one run's.
CPU s per set is the process CPU time of the whole set; the ratio column is faster-whisper's
``BatchedInferencePipeline`` int8 b8 CPU seconds over the row's (above 1: cheaper than it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
REFERENCE = "fw-int8-batched8"

LABELS = {
    "ours-ct2-int8": "**ours-ct2-int8** (default request: greedy + fallback, segment timestamps, language detected)",
    "ours-ct2-fp32": "ours-ct2-fp32 (`COMPUTE_TYPE=float32`)",
    "ours-ct2-int8-notimestamps": "ours-ct2-int8, `timestamps: none`",
    "ours-ct2-int8-words": "ours-ct2-int8, `timestamps: word`",
    "ours-ct2-int8-trimmed": "ours-ct2-int8, `TRIM_ENCODER_WINDOW=true`",
    "ours-ct2-int8-beam5": "ours-ct2-int8, `num_beams: 5`",
    "ours-transformers": "**ours-transformers** (fp32, greedy + fallback)",
    "ours-transformers-words": "ours-transformers, `timestamps: word`",
    "ours-transformers-beam5": "ours-transformers, `num_beams: 5`",
    "ours-transformers-greedy": "ours-transformers, draft loaded, `assisted: false`",
    "ours-transformers-assisted": "ours-transformers, speculative (`assisted: true`)",
    "ours-transformers-auto": "ours-transformers, `assisted: \"auto\"`",
    "blog-pipeline": "blog-pipeline (stock pipeline, 5 beams by default, language en)",
    "fw-int8": "fw-int8 sequential",
    "fw-int8-batched8": "fw-int8 `BatchedInferencePipeline` b8 (its default: no timestamp tokens)",
    "fw-int8-batched8-timestamps": "fw-int8 `BatchedInferencePipeline` b8, `without_timestamps=False`",
    "fw-fp32": "fw-fp32 sequential",
    "fw-fp32-batched8": "fw-fp32 `BatchedInferencePipeline` b8",
}


def systems_table(report: dict) -> list[str]:
    short, long = "asr_short", "asr_long"
    reference = next((r for r in report["systems"] if r["system"] == REFERENCE), None)
    lines = [
        "| system | asr_short WER | x real time | CPU s | fw b8 / ours | p50 / p95 s | asr_long WER | x real time | CPU s | fw b8 / ours |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["systems"]:
        cells = [LABELS.get(row["system"], row["system"])]
        for name in (short, long):
            figures = row.get(name)
            if not figures:
                cells += ["–"] * (5 if name == short else 4)
                continue
            ratio = f"{reference[name]['cpu_s'] / figures['cpu_s']:.2f}" if reference and name in reference else "–"
            cells += [f"{figures['wer']:.3f}", f"x{figures['x_realtime']}", f"{figures['cpu_s']}", ratio]
            if name == short:
                cells.append(f"{figures['p50_s']} / {figures['p95_s']}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def server_label(name: str, run: dict) -> str:
    env = run.get("env")
    if not env:
        return name
    label = env["ASR_BACKEND"] + (" + diarization loaded (diarizing every request)" if env.get("DIARIZATION_MODEL") else "")
    label += ", `TRIM_ENCODER_WINDOW=true`" if env.get("TRIM_ENCODER_WINDOW") == "true" else ""
    return f"{label}, `MICRO_BATCH_SIZE={env['MICRO_BATCH_SIZE']}`"


def server_table(report: dict) -> list[str]:
    lines = ["| server | 1 client | 4 clients | 8 clients | 8 clients / 1 | peak RSS |", "|---|---:|---:|---:|---:|---:|"]
    for name, run in report.get("server", {}).items():
        if "error" in run:
            lines.append(f"| {name} | error: {run['error'][:80]} | | | | |")
            continue
        cells = [f"{run[key]['requests_per_s']:.2f} ({run[key]['audio_s_per_s']:.1f})" if key in run else "–" for key in ("clients_1", "clients_4", "clients_8")]
        speedup = run.get("speedup_vs_1_client", {}).get("8", "–")
        lines.append(f"| {server_label(name, run)} | " + " | ".join(cells) + f" | {speedup} | {run['peak_rss_mib'] / 1024:.1f} GiB |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path, default=REPO_DIR / "bench" / "results.json")
    args = parser.parse_args()
    report = json.loads(args.results.read_text())
    print(f"{report.get('cpu', 'CPU not recorded')}, {report['cpus']} CPUs; load average {report['loadavg_start']} at the start, {report.get('loadavg_end')} at the end\n")
    print("\n".join(systems_table(report)))
    if report.get("server"):
        print("\nLive server, requests/s (audio s per wall s):\n")
        print("\n".join(server_table(report)))
    if "diarization" in report:
        print(f"\ndiarization: {json.dumps(report['diarization'])}")


if __name__ == "__main__":
    main()
