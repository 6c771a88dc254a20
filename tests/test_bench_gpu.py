"""bench.gpu's code path, on tiny random-weight shapes and the CPU (GPU figures belong in docs/benchmarks.md).

It runs in a subprocess: the benchmark fixes the decoding (no fallback, a fixed token count) for the
whole process it runs in."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_DIR


def test_gpu_benchmark_runs_both_systems_on_tiny_shapes(tmp_path):
    output = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, "-m", "bench.gpu", "--tiny", "--device", "cpu", "--minutes", "0.2", "--tokens", "8", "--batch-size", "4",
                             "--systems", "ours,blog", "--output", str(output)], cwd=REPO_DIR, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["shapes"] == "tiny" and report["audio_min"] == 0.2
    assert [system["system"] for system in report["systems"]] == ["ours", "blog"]
    assert all(system["audio_min_per_s"] > 0 and system["wall_s"] > 0 for system in report["systems"])
