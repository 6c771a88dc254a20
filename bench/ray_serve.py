"""Ray Serve's request batching against the server's own micro-batcher, on a local Ray cluster:
for each ``RAY_BATCHING`` mode, ``serve_ray.py`` with N replicas under C concurrent clients.

    python -m bench.ray_serve [--modes serve,ingress] [--replicas 2] [--clients 8] [--requests 48]

Requests are the dev short set's clips (HF contract, raw audio), cycled. Reports requests/s, audio
seconds per second, latency p50/p95 and how many requests each replica answered. Speed figures are
only meaningful on an otherwise idle machine: the load average is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.data import manifest_rows

REPO_DIR = Path(__file__).resolve().parent.parent


class RayServeProcess:
    """``python serve_ray.py`` (what ``make serve-ray`` runs) on a loopback port, in its own process
    group so stopping it stops the local Ray cluster it started."""

    def __init__(self, port: int, env: dict[str, str], log_path: Path, startup_timeout: float = 420):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("w")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOST": "127.0.0.1", "PORT": str(port), **env}
        self.process = subprocess.Popen([sys.executable, "serve_ray.py"], cwd=REPO_DIR, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve_ray.py exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"Ray Serve not ready after {startup_timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()[-5000:]

    def replica_counts(self) -> dict[str, float]:
        """Requests answered per replica (``asr_replica_requests_total`` on /metrics)."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return {m.group(1): float(m.group(2)) for m in re.finditer(r'^asr_replica_requests_total\{replica="([^"]+)"\} ([0-9.e+]+)$', text, re.M)}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


def clips() -> list[tuple[bytes, float]]:
    return [(Path(row["audio"]).read_bytes(), float(row["duration"])) for row in manifest_rows("asr_short") if row["duration"] <= 15]


async def load(url: str, audio: list[tuple[bytes, float]], clients: int, requests: int) -> dict:
    semaphore = asyncio.Semaphore(clients)
    latencies: list[float] = []
    failures = 0

    async def one(client: httpx.AsyncClient, index: int) -> float:
        nonlocal failures
        body, seconds = audio[index % len(audio)]
        async with semaphore:
            started = time.perf_counter()
            answer = await client.post(f"{url}/predict", content=body, headers={"Content-Type": "application/octet-stream"}, timeout=600)
            latencies.append(time.perf_counter() - started)
            failures += answer.status_code != 200
            return seconds

    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(one(client, i) for i in range(clients)))  # warm-up: one round
        latencies.clear()
        started = time.perf_counter()
        audio_seconds = sum(await asyncio.gather(*(one(client, i) for i in range(requests))))
        wall = time.perf_counter() - started
    latencies.sort()
    return {"requests_per_s": round(requests / wall, 3), "audio_s_per_s": round(audio_seconds / wall, 2), "p50_s": round(statistics.median(latencies), 2),
            "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2), "failures": failures, "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_serve", description=__doc__)
    parser.add_argument("--modes", default="serve,ingress")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--asr-model", default=str(REPO_DIR / "models" / "whisper-base"))
    parser.add_argument("--asr-backend", default="ctranslate2")
    parser.add_argument("--port", type=int, default=18600)
    args = parser.parse_args(argv)
    audio = clips()
    results = {"load_average": os.getloadavg(), "replicas": args.replicas, "clients": args.clients, "requests": args.requests, "model": Path(args.asr_model).name, "backend": args.asr_backend, "modes": {}}
    for index, mode in enumerate(args.modes.split(",")):  # a fresh port each: the last cluster may still hold its own
        env = {"ASR_MODEL": args.asr_model, "ASR_BACKEND": args.asr_backend, "DIARIZATION_MODEL": "", "ASSISTANT_MODEL": "", "API_KEY": "",
               "RAY_REPLICAS": str(args.replicas), "RAY_BATCHING": mode, "RAY_MAX_BATCH_SIZE": str(args.max_batch_size)}
        server = RayServeProcess(args.port + index, env, REPO_DIR / ".pytest_cache" / f"bench-ray-{mode}.log")
        try:
            results["modes"][mode] = {**asyncio.run(load(server.url, audio, args.clients, args.requests)), "per_replica": server.replica_counts()}
        finally:
            server.stop()
        print(mode, json.dumps(results["modes"][mode]), file=sys.stderr)
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
