"""The server on Ray Serve (``serve_ray.py``): a local cluster, 2 replicas of tiny.en, answering the
openai SDK, the HF contract and whisper_tt's request; both replicas serve; a killed replica's
in-flight requests are answered 503 + Retry-After and the replica is replaced."""

from __future__ import annotations

import base64
import io
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import soundfile

from bench.ray_serve import RayServeProcess
from conftest import DATA_DIR, REPO_DIR, TINY_EN_MODEL, free_port

SETTINGS = {"asr_model": str(TINY_EN_MODEL), "asr_backend": "ctranslate2"}
JFK = DATA_DIR / "asr_short" / "jfk" / "jfk_openai.flac"
LONG = DATA_DIR / "asr_long" / "librivox_shakespeare_sonnets_1-3.wav"


@pytest.fixture(scope="module")
def ray_serve() -> Iterator[RayServeProcess]:
    server = RayServeProcess(free_port(), {"ASR_MODEL": SETTINGS["asr_model"], "ASR_BACKEND": "ctranslate2", "DIARIZATION_MODEL": "", "ASSISTANT_MODEL": "", "API_KEY": "",
                       "RAY_REPLICAS": "2", "RAY_BATCHING": "serve"}, REPO_DIR / ".pytest_cache" / "serve-ray.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def expected_jfk() -> str:
    from config import ModelSettings
    from handler import EndpointHandler

    return EndpointHandler(str(REPO_DIR), settings=ModelSettings(_env_file=None, **SETTINGS))({"inputs": JFK.read_bytes()})["text"]


def replica_pids() -> list[int]:
    """Serve names its replica processes ``ray::ServeReplica:<app>:<deployment>``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::ServeReplica:asr:asr"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_the_three_client_contracts(ray_serve, expected_jfk):
    from openai import OpenAI

    client = OpenAI(base_url=f"{ray_serve.url}/v1", api_key="unused", max_retries=0)
    assert client.audio.transcriptions.create(model="whisper-1", file=JFK.open("rb")).text == expected_jfk
    hf = httpx.post(ray_serve.url, json={"inputs": base64.b64encode(JFK.read_bytes()).decode(), "parameters": {"timestamps": "word"}}, timeout=120)
    assert hf.status_code == 200 and hf.json()["text"] == expected_jfk and hf.json()["words"]
    # whisper_tt's request: a float32 WAV (scipy-written), base64, in a JSON body.
    samples, rate = soundfile.read(JFK, dtype="float32")
    wav = io.BytesIO()
    soundfile.write(wav, samples, rate, format="WAV", subtype="FLOAT")
    tt = httpx.post(f"{ray_serve.url}/audio/transcriptions", json={"file": base64.b64encode(wav.getvalue()).decode(), "stream": False}, timeout=120)
    assert tt.status_code == 200 and tt.json()["text"] == expected_jfk
    bad = httpx.post(ray_serve.url, json={"inputs": base64.b64encode(b"not audio at all").decode()}, timeout=60)
    assert bad.status_code == 400 and "error" in bad.json()


def test_both_replicas_serve(ray_serve, expected_jfk):
    before = ray_serve.replica_counts()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{ray_serve.url}/predict", content=JFK.read_bytes(), headers={"Content-Type": "audio/flac"}, timeout=300), range(8)))
    assert [a.status_code for a in answers] == [200] * 8 and {a.json()["text"] for a in answers} == {expected_jfk}
    after = ray_serve.replica_counts()
    served = {replica for replica, count in after.items() if count > before.get(replica, 0)}
    assert len(served) == 2, after


def test_killed_replica_is_replaced_and_its_requests_get_a_retryable_error(ray_serve, expected_jfk):
    pids = replica_pids()
    assert len(pids) == 2, pids
    before = set(ray_serve.replica_counts())
    long_audio = LONG.read_bytes()
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(httpx.post, f"{ray_serve.url}/predict", content=long_audio, headers={"Content-Type": "audio/wav"}, timeout=600) for _ in range(6)]
        time.sleep(8)  # every request is in a replica by now (2.7 min of audio each: none is done)
        os.kill(pids[0], signal.SIGKILL)
        answers = [f.result() for f in futures]
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses  # none lost, none a bare 500
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers["Retry-After"] and "retry" in answer.json()["error"]
    # Serve starts a replacement: a third replica id answers within a few minutes.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: httpx.post(f"{ray_serve.url}/predict", content=JFK.read_bytes(), headers={"Content-Type": "audio/flac"}, timeout=300), range(4)))
        assert all(a.status_code in (200, 503) for a in answers)
        if set(ray_serve.replica_counts()) - before:
            break
        time.sleep(5)
    else:
        pytest.fail(f"no replacement replica served within 300 s: {ray_serve.replica_counts()}")
    assert len(replica_pids()) == 2
