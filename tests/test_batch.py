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

from conftest import REPO_DIR, TINY_EN_MODEL, load_manifest

# Short real clips: the job's plumbing is under test here, not the model on long audio.
ITEMS = ["LJ002-0020", "LJ002-0035", "LDC93S1", "cmu_us_aew_arctic_a0003", "cmu_us_aew_arctic_a0001", "cmu_us_aew_arctic_a0002", "fleurs-en-004", "1272-141231-0000"]
SETTINGS = {"asr_model": str(TINY_EN_MODEL), "asr_backend": "ctranslate2"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """The short clips plus a corrupt file, as a manifest with paths relative to it."""
    folder = tmp_path_factory.mktemp("batch-input")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
    rows = [{"id": row["id"], "audio": row["audio"]} for row in load_manifest("asr_short") if row["id"] in ITEMS]
    assert len(rows) == len(ITEMS)
    rows.append({"id": "corrupt", "audio": "corrupt.wav"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "manifest.jsonl"


@pytest.fixture(scope="module")
def reference_texts(manifest) -> dict[str, str]:
    """What one in-process handler with the same settings answers, item by item."""
    from config import ModelSettings
    from handler import EndpointHandler

    handler = EndpointHandler(str(REPO_DIR), settings=ModelSettings(_env_file=None, **SETTINGS))
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return {row["id"]: handler({"inputs": (manifest.parent / row["audio"]).read_bytes()})["text"] for row in rows if row["id"] != "corrupt"}


def batch_command(manifest: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "batch", str(manifest), "--output", str(output), "--asr-model", SETTINGS["asr_model"], "--asr-backend", "ctranslate2", *extra]


def read_rows(output: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(output.glob("*.json")) for line in path.read_text().splitlines() if line.strip()]


def test_killed_job_resumes_without_redoing_items(manifest, reference_texts, tmp_path):
    output = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR)}
    # One actor, one item per batch: results land file by file, so the kill falls mid-run.
    first = subprocess.Popen(batch_command(manifest, output, "--workers", "1", "--batch-size", "1"), cwd=REPO_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(output.glob("*.json")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, "the first run ended before any result was written"
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    first.wait()
    time.sleep(1)
    done_before = {row["id"] for row in read_rows(output)}
    assert 1 <= len(done_before) < len(ITEMS) + 1

    second = subprocess.run(batch_command(manifest, output, "--workers", "2", "--batch-size", "2"), cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    rows = read_rows(output)
    ids = [row["id"] for row in rows]
    assert sorted(ids) == sorted([*ITEMS, "corrupt"])  # every item exactly once: nothing lost, nothing redone
    assert summary["skipped"] == len(done_before) and summary["processed"] == len(ITEMS) + 1 - len(done_before)
    by_id = {row["id"]: row for row in rows}
    assert by_id["corrupt"]["error_kind"] == "audio_decode_error" and by_id["corrupt"]["text"] is None
    assert {i: by_id[i]["text"] for i in ITEMS} == reference_texts
    assert all(by_id[i]["error"] is None and by_id[i]["segments"] and by_id[i]["duration"] > 1 for i in ITEMS)
    assert summary["audio_hours"] > 0 and summary["audio_hours_per_hour"] > 0


def test_parquet_from_a_saved_hf_dataset(manifest, reference_texts, tmp_path):
    """An HF-datasets-style input (Audio feature, file bytes inside) to Parquet, in-process."""
    import datasets
    import pyarrow.parquet as pq
    import ray

    from batch.job import JobSpec, run

    rows = [json.loads(line) for line in manifest.read_text().splitlines()][:3]
    dataset = datasets.Dataset.from_dict({"id": [r["id"] for r in rows], "audio": [str(manifest.parent / r["audio"]) for r in rows]}).cast_column("audio", datasets.Audio(decode=False))
    dataset.save_to_disk(str(tmp_path / "dataset"))
    try:
        summary = run(JobSpec(inputs=[str(tmp_path / "dataset")], output=tmp_path / "out", output_format="parquet", settings=SETTINGS, workers=1, batch_size=2))
    finally:
        ray.shutdown()
    table = pq.read_table(tmp_path / "out")
    assert summary.processed == 3 and table.num_rows == 3
    assert {r["id"]: r["text"] for r in table.select(["id", "text"]).to_pylist()} == {r["id"]: reference_texts[r["id"]] for r in rows}


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
