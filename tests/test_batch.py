"""Ray Data batch transcription (``python -m batch``): same text as the in-process handler, a bad
file is one error row, a killed run resumes without redoing finished items, data-set inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_DIR, TINY_EN_MODEL, manifest_rows

# Short real clips: the job's plumbing is under test here, not the model on long audio.
ITEMS = ["LJ002-0020", "LJ002-0035", "LDC93S1", "cmu_us_aew_arctic_a0003", "cmu_us_aew_arctic_a0001", "cmu_us_aew_arctic_a0002", "fleurs-en-004", "1272-141231-0000"]
SETTINGS = {"asr_model": str(TINY_EN_MODEL), "asr_backend": "ctranslate2"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """The short clips plus a corrupt file, as a manifest with paths relative to it."""
    folder = tmp_path_factory.mktemp("batch-input")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
    rows = [{"id": row["id"], "audio": row["audio"]} for row in manifest_rows("asr_short") if row["id"] in ITEMS]
    assert len(rows) == len(ITEMS)
    rows.append({"id": "corrupt", "audio": "corrupt.wav"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "manifest.jsonl"


@pytest.fixture(scope="module")
def reference_texts(manifest) -> dict[str, str]:
    """What one handler with the same settings answers, item by item, in a process with the thread
    environment Ray gives an actor of one CPU (``OMP_NUM_THREADS=1``): the int8 kernels' results,
    and so a near-tie word, depend on it."""
    script = """
import json, sys
from pathlib import Path
from config import ModelSettings
from handler import EndpointHandler
settings, manifest = json.loads(sys.argv[1]), Path(sys.argv[2])
handler = EndpointHandler(sys.argv[3], settings=ModelSettings(_env_file=None, **settings))
rows = [json.loads(line) for line in manifest.read_text().splitlines()]
print(json.dumps({row["id"]: handler({"inputs": (manifest.parent / row["audio"]).read_bytes()})["text"] for row in rows if row["id"] != "corrupt"}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script, json.dumps({**SETTINGS, "cpu_threads": 1, "torch_threads": 1}), str(manifest), str(REPO_DIR)],
                            cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def batch_command(inputs: list[Path], output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "batch", *map(str, inputs), "--output", str(output), "--asr-model", SETTINGS["asr_model"], "--asr-backend", "ctranslate2", *extra]


def read_rows(output: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for path in sorted(output.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def complete_rows(output: Path) -> int:
    """Rows in the result files that read whole; a file still being written does not count. Reads
    only (batch.results.finished_rows would remove a file the running job is still writing)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = 0
    for path in output.glob("*.parquet"):
        try:
            count += pq.read_table(path).num_rows
        except (OSError, ValueError, pa.ArrowException):
            pass
    return count


@pytest.fixture(scope="module")
def saved_dataset(manifest, tmp_path_factory) -> tuple[Path, list[str]]:
    """Three of the clips as an HF data set (``Audio`` feature, file bytes inside), saved to disk."""
    import datasets

    rows = [json.loads(line) for line in manifest.read_text().splitlines()][:3]
    ids = [f"dataset-{row['id']}" for row in rows]
    folder = tmp_path_factory.mktemp("hf-dataset") / "dataset"
    dataset = datasets.Dataset.from_dict({"id": ids, "audio": [str(manifest.parent / row["audio"]) for row in rows]}).cast_column("audio", datasets.Audio(decode=False))
    dataset.save_to_disk(str(folder))
    return folder, ids


def test_killed_job_resumes_without_redoing_items(manifest, saved_dataset, reference_texts, tmp_path):
    output = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR)}
    # One actor, one item per batch: results land file by file, so the kill falls mid-run.
    first = subprocess.Popen(batch_command([manifest], output, "--workers", "1", "--batch-size", "1", "--format", "parquet"), cwd=REPO_DIR, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    # Wait for a whole result file: killed right after one appears, it was sometimes still being
    # written, and the resumed run rightly counted nothing done.
    while not complete_rows(output) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, "the first run ended before any result was written"
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    first.wait()
    time.sleep(1)
    from batch.results import finished_rows

    done_before = set(finished_rows(output, "parquet").column("id").to_pylist())  # drops a file cut short by the kill
    assert 1 <= len(done_before) < len(ITEMS) + 1

    # The resumed run also takes a new input, an HF-datasets-style one.
    dataset, dataset_ids = saved_dataset
    second = subprocess.run(batch_command([manifest, dataset], output, "--workers", "2", "--batch-size", "2", "--format", "parquet"), cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    rows = read_rows(output)
    ids = [row["id"] for row in rows]
    assert sorted(ids) == sorted([*ITEMS, "corrupt", *dataset_ids])  # every item exactly once: nothing lost, nothing redone
    assert summary["skipped"] == len(done_before) and summary["processed"] == len(ITEMS) + 1 + len(dataset_ids) - len(done_before)
    by_id = {row["id"]: row for row in rows}
    assert by_id["corrupt"]["error_kind"] == "audio_decode_error" and by_id["corrupt"]["text"] is None and summary["errors"] == 1
    assert {i: by_id[i]["text"] for i in ITEMS} == reference_texts
    assert {i: by_id[i]["text"] for i in dataset_ids} == {i: reference_texts[i.removeprefix("dataset-")] for i in dataset_ids}
    assert all(by_id[i]["error"] is None and by_id[i]["segments"] and by_id[i]["duration"] > 1 for i in [*ITEMS, *dataset_ids])
    assert summary["audio_hours"] > 0 and summary["audio_hours_per_hour"] > 0


def test_cut_short_result_file_is_removed_and_redone(tmp_path):
    from batch.results import finished_rows

    (tmp_path / "a.json").write_text(json.dumps({"id": "x", "text": "done"}) + "\n")
    (tmp_path / "b.json").write_text(json.dumps({"id": "y", "text": "done"}) + "\n" + '{"id": "z", "te')
    assert finished_rows(tmp_path, "jsonl").column("id").to_pylist() == ["x"]
    assert not (tmp_path / "b.json").exists()


def test_bad_inputs_are_refused_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, "-m", "batch", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "out")], cwd=REPO_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "does not exist" in result.stderr
    (tmp_path / "m.jsonl").write_text('{"id": "a", "audio": "a.wav"}\n{"id": "a", "audio": "b.wav"}\n')
    result = subprocess.run([sys.executable, "-m", "batch", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "out"), "--parameters", '{"languag": "en"}'], cwd=REPO_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown parameter 'languag'" in result.stderr
