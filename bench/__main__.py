"""One command, one process: the same dev audio and the same Whisper-base weights through our
handler's backends, the blog handler's configuration and faster-whisper, then the live server
under 1/4/8 concurrent clients. Prints a table and writes JSON.

    python -m bench [--systems ours-ct2,fw-int8-batched] [--sets asr_short,asr_long] [--no-server]

WER: Whisper's English normalizer on both sides, corpus-level (eval_client.metrics) over the items that have a
reference. Peak RSS: the process's resident set sampled every 20 ms while a system runs (models of
earlier systems are freed first, but the allocator may keep some: compare the server figure, its own
process). Speed figures are only meaningful on an otherwise idle machine: the load average is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from bench.data import manifest_rows  # noqa: E402

BASE = REPO_DIR / "models" / "whisper-base"
BASE_CT2 = REPO_DIR / "models" / "whisper-base-ct2"


def cpuinfo() -> str:
    """/proc/cpuinfo's text ("" where there is none: not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's marketing name, so figures say which machine gave them."""
    lines = cpuinfo().splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor() or "unknown")


def load_set(name: str) -> list[dict]:
    from audio import load_audio

    rows = manifest_rows(name)
    for row in rows:
        row["samples"] = load_audio(Path(row["audio"]).read_bytes(), 16000, 1e9).samples
    return rows


class PeakRSS:
    """Highest resident set size of a process (this one by default) while the block runs."""

    def __init__(self, pid: int | None = None):
        self.pid = pid

    def __enter__(self) -> "PeakRSS":
        self.peak, self._stop = psutil.Process(self.pid).memory_info().rss, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process(self.pid)
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --- the systems: each a factory returning ``transcribe(samples) -> text`` ------------------------


def ours(backend: str, timestamps: str = "segment", parameters: dict | None = None, **settings) -> Callable[[np.ndarray], str]:
    from asr import build_transcriber
    from config import InferenceConfig, ModelSettings

    settings = {"diarization_model": None, "assistant_model": None, **settings}
    transcriber = build_transcriber(ModelSettings(_env_file=None, asr_model=str(BASE), asr_backend=backend, **settings), REPO_DIR)
    config = InferenceConfig(timestamps=timestamps, **(parameters or {}))  # as deployed: language detected, segment timestamps, batch 24
    return lambda samples: transcriber.transcribe(samples, config).text


def speculative(assisted: bool | str) -> Callable[[np.ndarray], str]:
    """Greedy transformers decoding with or without a draft (speculative decoding is greedy).
    No distil-whisper weights are reachable offline: the draft is Whisper base's encoder output and
    its first and last decoder layers, untrained (distil-whisper's initialisation), so it is a weak
    drafter; the rows measure what speculative decoding costs or saves with it on this machine."""
    import tempfile

    from scripts.make_draft import build_draft

    with tempfile.TemporaryDirectory(prefix="draft-") as directory:  # loaded into memory, then removed
        draft = build_draft(BASE, Path(directory), layers=(0, 5), causal=True)
        return ours("transformers", parameters={"num_beams": 1, "assisted": assisted}, assistant_model=str(draft))


def blog() -> Callable[[np.ndarray], str]:
    # The blog handler's call: the stock pipeline, chunk 30, batch 24, timestamps; language en.
    import torch
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(BASE), dtype=torch.float32, device="cpu")

    def run(samples: np.ndarray) -> str:
        with torch.inference_mode():
            return asr(samples.copy(), chunk_length_s=30, batch_size=24, return_timestamps=True, generate_kwargs={"language": "en", "task": "transcribe"})["text"]

    return run


def faster_whisper(compute_type: str, batched: bool, timestamps: bool = False) -> Callable[[np.ndarray], str]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(str(BASE_CT2), device="cpu", compute_type=compute_type, cpu_threads=os.cpu_count() or 1, local_files_only=True)
    if batched:
        # Its default decodes without timestamp tokens (one segment per VAD chunk of up to 30 s).
        pipeline = BatchedInferencePipeline(model)
        return lambda samples: "".join(s.text for s in pipeline.transcribe(samples, language="en", beam_size=1, batch_size=8, without_timestamps=not timestamps)[0])
    return lambda samples: "".join(s.text for s in model.transcribe(samples, language="en", beam_size=1)[0])


SYSTEMS: dict[str, Callable[[], Callable[[np.ndarray], str]]] = {
    "ours-transformers": lambda: ours("transformers"),
    "ours-ct2-int8": lambda: ours("ctranslate2", compute_type="int8"),
    "ours-ct2-fp32": lambda: ours("ctranslate2", compute_type="float32"),
    "ours-ct2-int8-notimestamps": lambda: ours("ctranslate2", compute_type="int8", timestamps="none"),
    "ours-ct2-int8-words": lambda: ours("ctranslate2", compute_type="int8", timestamps="word"),
    "ours-ct2-int8-trimmed": lambda: ours("ctranslate2", compute_type="int8", trim_encoder_window=True),
    "ours-transformers-words": lambda: ours("transformers", timestamps="word"),
    "ours-transformers-beam5": lambda: ours("transformers", parameters={"num_beams": 5}),
    "ours-ct2-int8-beam5": lambda: ours("ctranslate2", compute_type="int8", parameters={"num_beams": 5}),
    "ours-transformers-greedy": lambda: speculative(False),
    "ours-transformers-assisted": lambda: speculative(True),
    "ours-transformers-auto": lambda: speculative("auto"),
    "blog-pipeline": blog,
    "fw-int8": lambda: faster_whisper("int8", batched=False),
    "fw-int8-batched8": lambda: faster_whisper("int8", batched=True),
    "fw-int8-batched8-timestamps": lambda: faster_whisper("int8", batched=True, timestamps=True),
    "fw-fp32": lambda: faster_whisper("float32", batched=False),
    "fw-fp32-batched8": lambda: faster_whisper("float32", batched=True),
}


def wer(rows: list[dict], hypotheses: list[str]) -> float | None:
    from eval_client.metrics import corpus_wer

    pairs = [(r["text"], h) for r, h in zip(rows, hypotheses) if r.get("text")]
    score = corpus_wer([p[0] for p in pairs], [p[1] for p in pairs])
    return None if score is None else round(score, 4)


def run_system(name: str, sets: dict[str, list[dict]]) -> dict:
    result: dict = {"system": name}
    with PeakRSS() as rss:
        started = time.perf_counter()
        transcribe = SYSTEMS[name]()
        result["load_s"] = round(time.perf_counter() - started, 2)
        transcribe(sets[next(iter(sets))][0]["samples"][:16000 * 5])  # warm-up (first-call allocations)
        for set_name, rows in sets.items():
            latencies, texts = [], []
            cpu_started = sum(psutil.Process().cpu_times()[:2])
            for row in rows:
                started = time.perf_counter()
                texts.append(transcribe(row["samples"]))
                latencies.append(time.perf_counter() - started)
            audio_s = sum(len(r["samples"]) for r in rows) / 16000
            cpu_s = sum(psutil.Process().cpu_times()[:2]) - cpu_started
            result[set_name] = {
                # CPU seconds (user + system) are far less sensitive to other processes' load than wall time.
                "cpu_s": round(cpu_s, 1),
                "audio_s": round(audio_s, 1),
                "wall_s": round(sum(latencies), 2),
                "x_realtime": round(audio_s / sum(latencies), 2),
                "rtf": round(sum(latencies) / audio_s, 4),
                "wer": wer(rows, texts),
                "p50_s": round(statistics.median(latencies), 3),
                "p95_s": round(float(np.percentile(latencies, 95)), 3),
                # Per item: a corpus figure can hide one clip gone wrong (a misdetected language, a loop).
                "item_wer": {r["id"]: wer([r], [t]) for r, t in zip(rows, texts) if r.get("text")},
            }
    result["peak_rss_mib"] = round(rss.peak / 2**20)
    del transcribe
    gc.collect()
    return result


# --- the live server: throughput with 1/4/8 concurrent clients ---------------------------------


def server_throughput(env: dict[str, str], rows: list[dict], concurrency: tuple[int, ...] = (1, 4, 8), rounds: int = 2) -> dict:
    """Each client sends WAVs of ``rows`` back to back; requests/s and audio s per wall s."""
    import httpx
    import soundfile

    from tests.conftest import LiveServer

    bodies = []
    for row in rows:
        buffer = io.BytesIO()
        soundfile.write(buffer, row["samples"], 16000, format="WAV")
        bodies.append((buffer.getvalue(), len(row["samples"]) / 16000))
    server = LiveServer({"ASR_MODEL": str(BASE), "ASSISTANT_MODEL": "", "DIARIZATION_MODEL": "", "API_KEY": "", **env})
    out: dict = {"env": env}
    try:

        async def client(http: httpx.AsyncClient, jobs: list[tuple[bytes, float]]) -> None:
            for body, _ in jobs:
                response = await http.post(f"{server.url}/", content=body, headers={"Content-Type": "audio/wav"})
                response.raise_for_status()

        async def load(clients: int) -> float:
            jobs = bodies * rounds
            shares = [jobs[i::clients] for i in range(clients)]
            async with httpx.AsyncClient(timeout=600) as http:
                await client(http, bodies[:1])  # warm-up
                started = time.perf_counter()
                await asyncio.gather(*(client(http, share) for share in shares))
                return time.perf_counter() - started

        with PeakRSS(server.process.pid) as rss:
            for clients in concurrency:
                wall = asyncio.run(load(clients))
                audio = sum(seconds for _, seconds in bodies) * rounds
                out[f"clients_{clients}"] = {"requests_per_s": round(len(bodies) * rounds / wall, 3), "audio_s_per_s": round(audio / wall, 2)}
        out["peak_rss_mib"] = round(rss.peak / 2**20)
        base = out[f"clients_{concurrency[0]}"]["requests_per_s"]
        out["speedup_vs_1_client"] = {str(c): round(out[f"clients_{c}"]["requests_per_s"] / base, 2) for c in concurrency}
    finally:
        server.stop()
    return out


def diarization_speed(rows: list[dict]) -> dict:
    """Seconds of diarization per minute of audio (offline pyannote pipeline), when it is built."""
    from config import ModelSettings
    from diarization_utils import Diarizer

    model = REPO_DIR / "models" / "pyannote-diarization"
    if not model.is_dir():
        return {"skipped": "models/pyannote-diarization missing (make models)"}
    diarizer = Diarizer.load(ModelSettings(_env_file=None, asr_model=str(BASE), diarization_model=str(model)), REPO_DIR)
    diarizer.diarize(rows[0]["samples"][:16000 * 5])
    started = time.perf_counter()
    for row in rows:
        diarizer.diarize(row["samples"])
    wall = time.perf_counter() - started
    minutes = sum(len(r["samples"]) for r in rows) / 16000 / 60
    return {"audio_min": round(minutes, 2), "s_per_audio_min": round(wall / minutes, 2)}


def print_table(report: dict) -> None:
    print(f"\nload average at start {report['loadavg_start']}, at end {report['loadavg_end']}; {report['cpus']} CPUs ({report['cpu']})")
    sets = report["sets"]
    header = "| system | " + " | ".join(f"{s}: WER / x real time / RTF / CPU s / p50 / p95 s" for s in sets) + " | peak RSS MiB |"
    print(header)
    print("|" + "---|" * (len(sets) + 2))
    for r in report["systems"]:
        cells = [f"{r[s]['wer']} / x{r[s]['x_realtime']} / {r[s]['rtf']} / {r[s]['cpu_s']} / {r[s]['p50_s']} / {r[s]['p95_s']}" for s in sets]
        print(f"| {r['system']} | " + " | ".join(cells) + f" | {r['peak_rss_mib']} |")
    for name, server in report.get("server", {}).items():
        print(f"\nserver {name}: " + json.dumps(server))
    if "diarization" in report:
        print("\ndiarization: " + json.dumps(report["diarization"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {', '.join(SYSTEMS)}")
    parser.add_argument("--sets", default="asr_short,asr_long")
    parser.add_argument("--no-server", action="store_true", help="skip the live-server throughput runs")
    parser.add_argument("--no-diarization", action="store_true")
    parser.add_argument("--server-backends", default="ctranslate2,transformers", help="backends for the server runs; 'ctranslate2-trimmed' adds TRIM_ENCODER_WINDOW")
    parser.add_argument("--json", default=str(REPO_DIR / "bench" / "results.json"))
    args = parser.parse_args()

    report: dict = {"loadavg_start": [round(x, 2) for x in os.getloadavg()], "cpu": cpu_model(), "cpus": os.cpu_count(), "sets": args.sets.split(","), "systems": []}
    sets = {name: load_set(name) for name in report["sets"]}
    for name in args.systems.split(","):
        print(f"running {name} …", file=sys.stderr, flush=True)
        report["systems"].append(run_system(name, sets))
        print(json.dumps(report["systems"][-1]), file=sys.stderr, flush=True)
        Path(args.json).write_text(json.dumps(report, indent=2))  # partial results survive a later failure
    if not args.no_server:
        short = [r for r in load_set("asr_short") if len(r["samples"]) <= 16000 * 30][:8]
        report["server"] = {}
        for backend in args.server_backends.split(","):
            for batch in ("1", "8"):
                print(f"server {backend} micro_batch {batch} …", file=sys.stderr, flush=True)
                try:
                    env = {"ASR_BACKEND": backend.removesuffix("-trimmed"), "MICRO_BATCH_SIZE": batch, **({"TRIM_ENCODER_WINDOW": "true"} if backend.endswith("-trimmed") else {})}
                    report["server"][f"{backend}-batch{batch}"] = server_throughput(env, short)
                except Exception as error:  # keep the other figures
                    report["server"][f"{backend}-batch{batch}"] = {"error": f"{type(error).__name__}: {error}"[:2000]}
                print(json.dumps(report["server"][f"{backend}-batch{batch}"]), file=sys.stderr, flush=True)
                Path(args.json).write_text(json.dumps(report, indent=2))
        diarization = REPO_DIR / "models" / "pyannote-diarization"
        if diarization.is_dir():  # the RSS goal: base + diarization loaded, diarizing requests
            print("server ctranslate2 with diarization …", file=sys.stderr, flush=True)
            try:
                report["server"]["ctranslate2-batch8-diarization"] = server_throughput({"ASR_BACKEND": "ctranslate2", "MICRO_BATCH_SIZE": "8", "DIARIZATION_MODEL": str(diarization.relative_to(REPO_DIR))}, short, rounds=1)
            except Exception as error:
                report["server"]["ctranslate2-batch8-diarization"] = {"error": f"{type(error).__name__}: {error}"[:2000]}
    if not args.no_diarization:
        try:
            report["diarization"] = diarization_speed(load_set("diarization")[:4])
        except Exception as error:
            report["diarization"] = {"error": f"{type(error).__name__}: {error}"[:2000]}
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.json).write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
