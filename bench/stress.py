"""Cost per request on hostile and heavy inputs (issue 13): each scenario runs in its own process
with the handler as ``make serve`` loads it (Whisper base on CTranslate2 + the offline pyannote
pipeline) and prints one JSON line: wall time, the process's RSS after loading (base) and its peak
while the request ran (sampled every 20 ms), and what the handler answered.

    python -m bench.stress [--scenarios one-hertz,silence,speech] [--silence-hours 4] [--speech-hours 4]

- ``one-hertz``: a 28 KB WAV declaring 1 Hz (14,000 s once resampled to 16 kHz): must be refused at once.
- ``silence``: a FLAC of digital silence, diarization on: must cost seconds, whatever its length.
- ``speech``: the dev clips (asr_short, asr_long, diarization) concatenated to the length asked for,
  diarization on: peak RSS and wall time per audio hour.

Figures are only comparable on an otherwise idle machine: the load average is printed with each.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile

REPO_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("ASR_DATA_DIR", REPO_DIR.parent / "shared" / "data"))
SCENARIOS = ("one-hertz", "silence", "speech")
BLOCK_S = 600  # seconds written per block: the files are built without holding them as float arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--silence-hours", type=float, default=4.0)
    parser.add_argument("--speech-hours", type=float, default=4.0)
    parser.add_argument("--child", nargs=2, metavar=("SCENARIO", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(*args.child)), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios.split(","):
            if scenario not in SCENARIOS:
                parser.error(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
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
        for line in (DATA_DIR / folder / "manifest.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                samples = load_audio((DATA_DIR / folder / row["audio"]).read_bytes()).samples
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


if __name__ == "__main__":
    main()
