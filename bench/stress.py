"""Cost per request on hostile and heavy inputs (issue 13), one JSON line per scenario.

    python -m bench.stress [--scenarios one-hertz,silence,speech,tt-burst,slowloris,concurrent-long] [--silence-hours 4] [--speech-hours 4]

Handler scenarios run in their own process with the handler as ``make serve`` loads it (Whisper base
on CTranslate2 + the offline pyannote pipeline) and report wall time, the process's RSS after loading
(base) and its peak while the request ran (sampled every 20 ms), and what the handler answered:

- ``one-hertz``: a 28 KB WAV declaring 1 Hz (14,000 s once resampled to 16 kHz): must be refused at once.
- ``silence``: a FLAC of digital silence, diarization on: must cost seconds, whatever its length.
- ``speech``: the dev clips (asr_short, asr_long, diarization) concatenated to the length asked for,
  diarization on: peak RSS and wall time per audio hour.

Server scenarios start ``python -m server`` on the same models and act as its clients:

- ``tt-burst``: ``--tt-requests`` (300) whisper_tt requests at once, as lmms-eval sends them: how many
  were answered (a 503 is an item lost to whisper_tt).
- ``slowloris``: 17 uploads trickling a byte every 0.5 s while 8 normal clients send a clip: the
  normal clients' statuses and latency, the trickling ones' answer (``BODY_READ_TIMEOUT_S=10``).
- ``concurrent-long``: ``--concurrent`` (8) files of ``--concurrent-hours`` of speech at once,
  diarized, with ``MAX_AUDIO_SECONDS_IN_FLIGHT`` = ``--budget-hours`` (and ``MEMORY_BUDGET_GIB`` =
  ``--memory-budget-gib``): each file's status and the server's peak RSS.
- ``live-hour``: one live session (``/v1/realtime``, diarization on) streamed ``--live-hours`` (1) of
  the dev clips, each followed by 1.5 s of silence that ends its turn, as fast as the server reads
  them: the server's RSS every ``--live-sample-minutes`` (5) of streamed audio, and how many turns
  were transcribed; the trend (least squares, GiB per audio hour) after the first marks is growth,
  the min/max only how RSS moves with each turn.

Figures are only comparable on an otherwise idle machine: the load average is printed with each.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import soundfile

from bench.data import data_dir, manifest_rows

REPO_DIR = Path(__file__).resolve().parent.parent
HANDLER_SCENARIOS = ("one-hertz", "silence", "speech")
SERVER_SCENARIOS = ("tt-burst", "slowloris", "concurrent-long", "live-hour")
SCENARIOS = HANDLER_SCENARIOS + SERVER_SCENARIOS
BLOCK_S = 600  # seconds written per block: the files are built without holding them as float arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--silence-hours", type=float, default=4.0)
    parser.add_argument("--speech-hours", type=float, default=4.0)
    parser.add_argument("--tt-requests", type=int, default=300)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--concurrent-hours", type=float, default=0.5)
    parser.add_argument("--budget-hours", type=float, default=1.0, help="MAX_AUDIO_SECONDS_IN_FLIGHT for concurrent-long, in hours")
    parser.add_argument("--memory-budget-gib", type=float, default=None, help="MEMORY_BUDGET_GIB for concurrent-long (default: the server's own)")
    parser.add_argument("--live-hours", type=float, default=1.0, help="live-hour: audio streamed through the one session, in hours")
    parser.add_argument("--live-sample-minutes", type=float, default=5.0, help="live-hour: server RSS sampled every this many minutes of streamed audio")
    parser.add_argument("--child", nargs=2, metavar=("SCENARIO", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(*args.child)), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios.split(","):
            if scenario not in SCENARIOS:
                parser.error(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
            if scenario in SERVER_SCENARIOS:
                print(json.dumps(run_server_scenario(scenario, args, Path(tmp)) | {"load_average": [round(x, 2) for x in os.getloadavg()]}), flush=True)
                continue
            path = Path(tmp) / f"{scenario}.audio"
            hours = {"silence": args.silence_hours, "speech": args.speech_hours}.get(scenario, 0.0)
            path.write_bytes(build_input(scenario, hours))
            result = subprocess.run([sys.executable, "-m", "bench.stress", "--child", scenario, str(path)], cwd=REPO_DIR, capture_output=True, text=True)
            line = result.stdout.strip().splitlines()[-1] if result.returncode == 0 and result.stdout.strip() else json.dumps({"scenario": scenario, "failed": result.stderr[-2000:]})
            row = json.loads(line) | {"file_bytes": path.stat().st_size, "load_average": [round(x, 2) for x in os.getloadavg()]}
            print(json.dumps(row), flush=True)
            path.unlink()


def build_input(scenario: str, hours: float) -> bytes:
    buffer = io.BytesIO()
    if scenario == "one-hertz":
        soundfile.write(buffer, np.zeros(14000, dtype=np.int16), 1, format="WAV", subtype="PCM_16")
        return buffer.getvalue()
    # Just under the handler's default MAX_AUDIO_SECONDS (4 h) when 4 hours are asked for.
    total = int(hours * 3600 * 16000) - 16000
    clips = [] if scenario == "silence" else dev_speech()
    with soundfile.SoundFile(buffer, mode="w", samplerate=16000, channels=1, format="FLAC", subtype="PCM_16") as out:
        written, clip_index = 0, 0
        while written < total:
            size = min(BLOCK_S * 16000, total - written)
            if not clips:
                out.write(np.zeros(size, dtype=np.int16))
            else:
                parts, filled = [], 0
                while filled < size:
                    clip = clips[clip_index % len(clips)][: size - filled]
                    parts.append(clip)
                    filled += len(clip)
                    clip_index += 1
                out.write(np.concatenate(parts))
            written += size
    return buffer.getvalue()


def dev_speech() -> list[np.ndarray]:
    """Every dev clip with speech, at 16 kHz, in manifest order."""
    sys.path.insert(0, str(REPO_DIR))
    from audio import load_audio

    clips = []
    for folder in ("asr_short", "asr_long", "diarization"):
        for row in manifest_rows(folder):
            samples = load_audio(Path(row["audio"]).read_bytes()).samples
            if len(samples) > 16000 * 2:  # the 1 s silence item and such add nothing
                clips.append(samples)
    return clips


def run_child(scenario: str, file: str) -> dict:
    sys.path.insert(0, str(REPO_DIR))
    from config import ModelSettings
    from handler import EndpointHandler

    process = psutil.Process()
    settings = ModelSettings(_env_file=None, asr_model=str(REPO_DIR / "models" / "whisper-base"), diarization_model=str(REPO_DIR / "models" / "pyannote-diarization"), asr_backend="ctranslate2", assistant_model=None, hf_token=None)
    handler = EndpointHandler(str(REPO_DIR), settings=settings)
    data = Path(file).read_bytes()
    base = process.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        response = handler({"inputs": data, "parameters": {"diarize": True}})
        outcome = {"duration": response["duration"], "strategy": response["strategy"], "num_speakers": response["num_speakers"], "words": len(response["text"].split()), "timings": response["timings"]}
    except Exception as error:  # the refusals are the expected outcome of some scenarios
        outcome = {"error": f"{type(error).__name__}: {error}"}
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    row = {"scenario": scenario, "wall_s": round(wall, 3), "base_rss_gib": round(base / 2**30, 3), "peak_rss_gib": round(peak[0] / 2**30, 3), "peak_over_base_gib": round((peak[0] - base) / 2**30, 3)} | outcome
    if outcome.get("duration"):
        row["wall_s_per_audio_hour"] = round(wall / (outcome["duration"] / 3600), 1)
    return row


# --- server scenarios ------------------------------------------------------------------------------

SHORT_CLIP = "librispeech/dev-clean/1272-141231-0000.flac"  # 4.65 s


def run_server_scenario(scenario: str, args: argparse.Namespace, tmp: Path) -> dict:
    if scenario == "tt-burst":
        with live_server({}) as (url, _):
            return {"scenario": scenario} | asyncio.run(tt_burst(url, args.tt_requests))
    if scenario == "slowloris":
        with live_server({"BODY_READ_TIMEOUT_S": "10"}) as (url, _):
            return {"scenario": scenario} | slowloris(url)
    if scenario == "live-hour":
        with live_server({}) as (url, process):
            return {"scenario": scenario, "hours": args.live_hours} | asyncio.run(live_hour(url, process, args.live_hours, args.live_sample_minutes * 60))
    path = tmp / "long.flac"
    path.write_bytes(build_input("speech", args.concurrent_hours))
    env = {"MAX_AUDIO_SECONDS_IN_FLIGHT": str(args.budget_hours * 3600), "MAX_UPLOAD_BYTES": str(2**31)}
    if args.memory_budget_gib:
        env["MEMORY_BUDGET_GIB"] = str(args.memory_budget_gib)
    with live_server(env) as (url, process):
        row = concurrent_long(url, process, path.read_bytes(), args.concurrent)
    path.unlink()
    return {"scenario": scenario, "files": args.concurrent, "hours_each": args.concurrent_hours, "budget_hours": args.budget_hours, "memory_budget_gib": args.memory_budget_gib} | row


@contextlib.contextmanager
def live_server(env: dict[str, str]) -> Iterator[tuple[str, psutil.Process]]:
    """``python -m server`` on ``make serve``'s models, on a free loopback port, until ready."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    models = REPO_DIR / "models"
    full_env = {**os.environ, "ASR_MODEL": str(models / "whisper-base"), "DIARIZATION_MODEL": str(models / "pyannote-diarization"), "ASSISTANT_MODEL": "", "API_KEY": "", **env}
    process = subprocess.Popen([sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=REPO_DIR, env=full_env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            time.sleep(0.5)
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)


async def live_hour(url: str, process: psutil.Process, hours: float, sample_every_s: float) -> dict:
    from websockets.asyncio.client import connect

    from eval_client.live import pcm16_chunks, realtime_url

    clips = dev_speech()
    gap = np.zeros(int(1.5 * 16000), dtype=np.float32)  # longer than the server VAD's silence: ends the turn
    counts = {"completed": 0, "failed": 0}
    errors: list[str] = []
    marks: list[dict] = []
    started = time.monotonic()

    def mark(streamed_s: float) -> None:
        with contextlib.suppress(psutil.Error):
            marks.append({"audio_min": round(streamed_s / 60, 1), "wall_s": round(time.monotonic() - started, 1), "rss_gib": round(process.memory_info().rss / 2**30, 3), "turns_completed": counts["completed"]})

    async with connect(realtime_url(url), max_size=None) as ws:
        created = json.loads(await ws.recv())
        if created.get("type") == "error":
            return {"failed": created["error"].get("message")}

        async def receive() -> None:
            async for message in ws:
                body = json.loads(message)
                kind = body.get("type", "")
                if kind.endswith("input_audio_transcription.completed"):
                    counts["completed"] += 1
                elif kind.endswith("input_audio_transcription.failed"):
                    counts["failed"] += 1
                elif kind == "error":
                    errors.append(str((body.get("error") or {}).get("message")))

        receiver = asyncio.create_task(receive())
        mark(0.0)
        streamed, clips_sent, next_mark = 0.0, 0, sample_every_s
        while streamed < hours * 3600:
            clip = np.concatenate([clips[clips_sent % len(clips)], gap])
            for chunk in pcm16_chunks(clip, 16000):  # ws.send waits while the server stops reading (backpressure)
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode("ascii")}))
            streamed += len(clip) / 16000
            clips_sent += 1
            if streamed >= next_mark:
                mark(streamed)
                next_mark += sample_every_s
        # The last turns: wait until the texts stop coming (30 s without one; the server idles out at 60).
        last, seen = time.monotonic(), -1
        while time.monotonic() - last < 30 and not receiver.done():
            if counts["completed"] + counts["failed"] != seen:
                last, seen = time.monotonic(), counts["completed"] + counts["failed"]
            await asyncio.sleep(1)
        mark(streamed)
        receiver.cancel()
    rss = [m["rss_gib"] for m in marks]
    settled = marks[min(2, len(marks) - 1):]  # from the second mark on: models warm, buffers allocated
    # Growth is the trend (least squares over audio time), not the spread: RSS moves with each turn's
    # buffers and the allocator, and returns; a leak climbs with the session's length.
    trend = float(np.polyfit([m["audio_min"] / 60 for m in settled], [m["rss_gib"] for m in settled], 1)[0]) if len(settled) > 2 else None
    return {"clips_streamed": clips_sent, "turns_completed": counts["completed"], "turns_failed": counts["failed"], "errors": errors[:5],
            "rss_gib_first_to_last": [rss[0], rss[-1]], "rss_gib_after_warmup_min_max": [min(m["rss_gib"] for m in settled), max(m["rss_gib"] for m in settled)],
            "rss_gib_last_minus_warm": round(rss[-1] - settled[0]["rss_gib"], 3), "rss_trend_gib_per_audio_hour": None if trend is None else round(trend, 3), "marks": marks}


def whisper_tt_body(path: Path) -> dict:
    """What lmms-eval's whisper_tt sends: a float32 WAV at 16 kHz, base64, in ``file``."""
    samples, rate = soundfile.read(path, dtype="float32")
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return {"file": base64.b64encode(buffer.getvalue()).decode(), "stream": False}


async def tt_burst(url: str, requests: int) -> dict:
    body = whisper_tt_body(data_dir() / "asr_short" / SHORT_CLIP)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        responses = await asyncio.gather(*(client.post("/audio/transcriptions", json=body) for _ in range(requests)), return_exceptions=True)
    wall = time.perf_counter() - started
    statuses = [r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in responses]
    answered = sum(1 for r in responses if isinstance(r, httpx.Response) and r.status_code == 200 and r.json().get("text"))
    return {"requests": requests, "answered_with_text": answered, "lost": requests - answered, "statuses": {str(s): statuses.count(s) for s in set(statuses)}, "wall_s": round(wall, 1)}


def trickle(url: str, seconds: float = 60.0) -> bytes:
    """A slowloris upload: headers promising 100 kB, then one byte every 0.5 s, until the server
    answers and closes the connection (or ``seconds`` pass); returns the reply."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=seconds) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: 100000\r\n\r\n")
        sock.settimeout(0.5)
        reply = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"R")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # reset after the server closed
                break
            if not chunk:
                break
            reply += chunk
        return reply


def slowloris(url: str, trickling: int = 17, normal: int = 8) -> dict:
    clip = (data_dir() / "asr_short" / SHORT_CLIP).read_bytes()

    def timed_post() -> tuple[int, float]:
        started = time.perf_counter()
        response = httpx.post(f"{url}/predict", content=clip, headers={"Content-Type": "audio/flac"}, timeout=600)
        return response.status_code, time.perf_counter() - started

    with ThreadPoolExecutor(trickling + normal) as pool:
        slow = [pool.submit(trickle, url) for _ in range(trickling)]
        time.sleep(1)  # the trickling uploads are in
        served = [future.result() for future in [pool.submit(timed_post) for _ in range(normal)]]
        replies = [future.result() for future in slow]
    slow_statuses = [reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/") else "none" for reply in replies]
    return {"trickling": trickling, "normal_statuses": sorted(status for status, _ in served), "normal_max_latency_s": round(max(latency for _, latency in served), 2),
            "trickling_statuses": {s: slow_statuses.count(s) for s in set(slow_statuses)}}


def concurrent_long(url: str, process: psutil.Process, data: bytes, files: int) -> dict:
    base = process.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], process.memory_info().rss)

    def post() -> tuple[int, float]:
        started = time.perf_counter()
        response = httpx.post(f"{url}/predict", content=data, params={"diarize": "true"}, headers={"Content-Type": "audio/flac"}, timeout=24 * 3600)
        return response.status_code, time.perf_counter() - started

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(files) as pool:
        results = [future.result() for future in [pool.submit(post) for _ in range(files)]]
    stop.set()
    sampler.join()
    statuses = [status for status, _ in results]
    return {"statuses": {str(s): statuses.count(s) for s in set(statuses)}, "wall_s": [round(seconds, 1) for _, seconds in results],
            "server_base_rss_gib": round(base / 2**30, 3), "server_peak_rss_gib": round(peak[0] / 2**30, 3), "peak_over_base_gib": round((peak[0] - base) / 2**30, 3)}


if __name__ == "__main__":
    main()
