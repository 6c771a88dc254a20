"""The evaluation client against a fault-injecting HTTP server on loopback: retries, backoff,
Retry-After, honest failure accounting, the three protocols' request shapes, the CLI and sharding."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import soundfile
from conftest import DATA_DIR, REPO_DIR, free_port

from eval_client.client import ASRClient, ClientConfig
from eval_client.data import SAMPLING_RATE, load_audio, load_items
from eval_client.metrics import normalize
from eval_client.report import EvalReport
from eval_client.runner import evaluate

MANIFEST = DATA_DIR / "asr_short" / "manifest.jsonl"
# Short items with distinct lengths: the server tells them apart by the number of samples received.
ITEM_IDS = ["1272-141231-0000", "1272-128104-0001", "1272-128104-0000", "3853-163249-0037",
            "fleurs-en-003", "fleurs-en-004", "cmu_us_aew_arctic_a0001", "LDC93S1"]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    frames: int


@dataclass
class FaultServer:
    """Answers each request by the next step of the script for its audio (keyed by sample count).

    Steps: "ok" (the scripted answer), "slow" (answers after ``slow_s``), "reset" (TCP RST),
    "garbage" (200 with invalid JSON), or an HTTP status code with optional headers: (503, {"Retry-After": "1"}).
    """

    scripts: dict[int, list] = field(default_factory=dict)
    answers: dict[int, dict] = field(default_factory=dict)
    slow_s: float = 2.0
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self):
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler_class())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def requests_for(self, frames: int) -> list[Seen]:
        return [s for s in self.seen if s.frames == frames]

    def _next_step(self, frames: int):
        with self.lock:
            script = self.scripts.get(frames, [])
            return script.pop(0) if script else "ok"

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                frames = _frames(self.path, body)
                with server.lock:
                    server.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body, frames))
                step = server._next_step(frames)
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(step, frames)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _answer(self, step, frames: int):
                if step == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if step == "slow":
                    time.sleep(server.slow_s)
                if step == "garbage":
                    return self._send(200, b'{"text": "unterminated', {"Content-Type": "application/json"})
                if isinstance(step, tuple | int):
                    status, headers = (step, {}) if isinstance(step, int) else step
                    return self._send(status, json.dumps({"error": f"injected {status}"}).encode(), {"Content-Type": "application/json", **headers})
                answer = server.answers.get(frames, {"text": ""})
                self._send(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

            def _send(self, status: int, payload: bytes, headers: dict[str, str]):
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    self.close_connection = True

        return Handler

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _frames(path: str, body: bytes) -> int:
    """Number of samples in the WAV a request carries, whatever the protocol."""
    if path.startswith("/v1/"):  # multipart: the WAV file part starts at RIFF; the header holds its size
        wav = body[body.index(b"RIFF"):]
        wav = wav[: 8 + struct.unpack("<I", wav[4:8])[0]]
    else:
        request = json.loads(body)
        wav = base64.b64decode(request.get("inputs") or request.get("file"))
    return soundfile.info(io.BytesIO(wav)).frames


@pytest.fixture(scope="module")
def items():
    by_id = {item.id: item for item in load_items(str(MANIFEST))}
    return [by_id[i] for i in ITEM_IDS]


@pytest.fixture(scope="module")
def frames(items) -> dict[str, int]:
    counts = {item.id: len(load_audio(item)) for item in items}
    assert len(set(counts.values())) == len(counts), "items must differ in length to be told apart"
    return counts


@pytest.fixture
def server(items, frames):
    fault = FaultServer(answers={frames[i.id]: {"text": i.reference} for i in items})
    yield fault
    fault.stop()


def fast_client(url: str, **overrides) -> ASRClient:
    settings = dict(base_url=url, api_key=None, timeout_s=0.5, max_retries=3, backoff_base_s=0.05, backoff_max_s=1.0, concurrency=3)
    return ASRClient(ClientConfig(**{**settings, **overrides}))


def test_faults_are_retried_or_reported_honestly(server, items, frames):
    f = {item.id: frames[item.id] for item in items}
    a, b, c, d, e, g, h, ok = ITEM_IDS
    server.scripts = {
        f[a]: [500, 502, "ok"],                    # recovers after two 5xx
        f[b]: [(429, {"Retry-After": "1"}), "ok"],  # rate limited: waits what the server asked
        f[c]: ["slow", "ok"],                       # attempt times out, then succeeds
        f[d]: ["reset", "ok"],                      # connection reset, then succeeds
        f[e]: ["garbage"],                          # 200 with invalid JSON: a failure, not ""
        f[g]: [400],                                # client error: never retried
        f[h]: [503, 503, 503, 503],                 # still failing after all retries
    }
    report = evaluate(fast_client(server.url), items, progress=False)
    by_id = {r.id: r for r in report.items}

    assert [r.id for r in report.items] == ITEM_IDS
    for item_id in (a, b, c, d, ok):
        assert by_id[item_id].ok and by_id[item_id].hypothesis == next(i.reference for i in items if i.id == item_id)
    assert [at.status for at in by_id[a].attempts] == [500, 502, 200]
    assert [at.error_kind for at in by_id[b].attempts] == ["http_429", None] and by_id[b].attempts[1].waited_before_s == 1.0
    assert [at.error_kind for at in by_id[c].attempts] == ["timeout", None]
    assert [at.error_kind for at in by_id[d].attempts] == ["connection", None]

    assert (by_id[e].ok, by_id[e].error_kind, by_id[e].hypothesis, len(by_id[e].attempts)) == (False, "bad_response", None, 1)
    assert (by_id[g].ok, by_id[g].error_kind, len(by_id[g].attempts)) == (False, "http_4xx", 1)
    assert len(server.requests_for(f[g])) == 1
    assert (by_id[h].ok, by_id[h].error_kind, len(by_id[h].attempts)) == (False, "http_5xx", 4)
    assert "injected 503" in by_id[h].error
    # Exponential backoff with jitter: before retry k the wait lies in [base·2^k / 2, base·2^k].
    waits = [at.waited_before_s for at in by_id[h].attempts[1:]]
    assert all(0.05 * 2**k / 2 <= w <= 0.05 * 2**k for k, w in enumerate(waits)), waits

    s = report.summary
    assert (s.items, s.succeeded, s.failed) == (8, 5, 3)
    assert s.failures_by_kind == {"bad_response": 1, "http_4xx": 1, "http_5xx": 1}
    assert s.failed_attempts_by_kind == {"http_5xx": 6, "http_429": 1, "timeout": 1, "connection": 1, "bad_response": 1, "http_4xx": 1}
    assert s.scored_items == 5 and s.wer == 0.0  # failures excluded: every answered item was exact
    failed_words = sum(len(normalize(i.reference).split()) for i in items if i.id in (e, g, h))
    all_words = sum(len(normalize(i.reference).split()) for i in items)
    assert s.wer_failures_as_deletions == pytest.approx(failed_words / all_words)
    assert s.latency_s.count == 5


def test_sync_transcribe_retries_and_returns_failures(server, items, frames):
    samples = load_audio(items[0])
    server.scripts = {frames[items[0].id]: [(503, {"Retry-After": "0"}), "ok", 401]}
    client = fast_client(server.url)
    outcome = client.transcribe_audio(samples, SAMPLING_RATE)
    assert outcome.ok and outcome.text == items[0].reference and len(outcome.attempts) == 2
    failed = client.transcribe_audio(samples, SAMPLING_RATE)
    assert (failed.ok, failed.text, failed.error_kind, len(failed.attempts)) == (False, None, "http_4xx", 1)


def test_batch_keeps_order_and_the_concurrency_limit(server, items, frames):
    server.slow_s = 0.3
    server.scripts = {frames[item.id]: ["slow"] for item in items[:5]}
    arrays = [(load_audio(item), SAMPLING_RATE) for item in items[:5]]
    outcomes = asyncio.run(fast_client(server.url, timeout_s=10, concurrency=2).transcribe_many(arrays))
    assert [o.text for o in outcomes] == [item.reference for item in items[:5]]
    assert 1 <= server.max_in_flight <= 2


def test_unreachable_endpoint_fails_every_item_after_retries(items):
    client = fast_client(f"http://127.0.0.1:{free_port()}", max_retries=2)
    report = evaluate(client, items[:2], progress=False)
    assert report.summary.failed == 2 and report.summary.failures_by_kind == {"connection": 2}
    assert all(len(r.attempts) == 3 and r.hypothesis is None for r in report.items)
    assert report.summary.wer is None and report.summary.wer_failures_as_deletions == 1.0


@pytest.mark.parametrize("protocol", ["hf", "openai", "tt"])
def test_protocol_request_shapes(server, items, frames, protocol):
    client = fast_client(server.url, protocol=protocol, api_key="s3cret", language="en", parameters={"batch_size": 4})
    outcome = client.transcribe_audio(load_audio(items[0]), SAMPLING_RATE)
    assert outcome.ok and outcome.text == items[0].reference
    (seen,) = server.seen
    assert seen.headers["authorization"] == "Bearer s3cret" and seen.frames == frames[items[0].id]
    if protocol == "hf":
        body = json.loads(seen.body)
        assert seen.path == "/" and body["parameters"] == {"language": "en", "batch_size": 4}
    elif protocol == "tt":
        body = json.loads(seen.body)
        assert seen.path == "/audio/transcriptions" and body["stream"] is False and body["batch_size"] == 4
        assert soundfile.info(io.BytesIO(base64.b64decode(body["file"]))).subtype == "FLOAT"  # lmms-eval's float32 WAV
    else:
        assert seen.path == "/v1/audio/transcriptions" and seen.headers["content-type"].startswith("multipart/form-data")
        for name, value in (("model", b"whisper-1"), ("response_format", b"json"), ("language", b"en"), ("batch_size", b"4")):
            assert f'name="{name}"'.encode() + b"\r\n\r\n" + value in seen.body


def test_no_authorization_header_without_a_key(server, items, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    ASRClient(ClientConfig(base_url=server.url, timeout_s=5)).transcribe_audio(load_audio(items[0]), SAMPLING_RATE)
    assert "authorization" not in server.seen[0].headers
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    monkeypatch.setenv("OPENAI_API_BASE", server.url)
    ASRClient(ClientConfig(timeout_s=5)).transcribe_audio(load_audio(items[0]), SAMPLING_RATE)
    assert server.seen[1].headers["authorization"] == "Bearer hf_from_env"


def test_diarization_scored_from_our_and_tt_response_shapes(tmp_path):
    from pyannote.database.util import load_rttm

    items = [i for i in load_items(str(DATA_DIR / "diarization" / "manifest.jsonl")) if i.id in ("pyannote_ami_debug_dev00", "fw_stereo_diarization")]
    ours, tt = {}, {}
    for item in items:
        reference = next(iter(load_rttm(str(item.rttm)).values()))
        turns = [(label, seg.start, seg.end) for seg, _, label in reference.itertracks(yield_label=True)]
        key = len(load_audio(item))
        ours[key] = {"text": "x", "speakers": [{"speaker": s, "text": "x", "timestamp": [a, b]} for s, a, b in turns],
                     "segments": [{"text": "x", "timestamp": [a, b]} for _, a, b in turns]}
        tt[key] = {"text": "x", "segments": [{"id": n, "speaker": s, "start_time": a, "end_time": b, "text": "x"} for n, (s, a, b) in enumerate(turns)]}
    fault = FaultServer()
    try:
        for protocol, answers in (("hf", ours), ("tt", tt)):
            fault.answers = answers
            report = evaluate(fast_client(fault.url, protocol=protocol, timeout_s=10), items, progress=False)
            assert report.summary.der == pytest.approx(0.0, abs=1e-6) and report.summary.jer == pytest.approx(0.0, abs=1e-6)
        fault.answers = {}  # no speakers at all: all speech missed
        report = evaluate(fast_client(fault.url, timeout_s=10), items, progress=False)
        assert report.summary.der == pytest.approx(1.0)
    finally:
        fault.stop()


def run_cli(*args: str, env: dict[str, str] | None = None, module: list[str] | None = None) -> subprocess.CompletedProcess:
    import os

    command = [sys.executable, *(module or ["-m", "eval_client"]), *args]
    return subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})})


def test_cli_writes_console_json_markdown_and_plots(server, items, frames, tmp_path):
    server.scripts = {frames[items[1].id]: [400]}
    out = tmp_path / "report"
    done = run_cli(str(MANIFEST), "--base-url", server.url, "--protocol", "tt", "--limit", "4", "--retries", "1", "--out", str(out), "--fail-on-error")
    assert done.returncode == 1, done.stderr  # --fail-on-error: a failed item fails the run, after the reports are written
    assert "WER (failures as deletions)" in done.stdout and "http_4xx: 1" in done.stdout
    report = EvalReport.model_validate_json((out / "report.json").read_text())
    assert report.summary.items == 4 and report.summary.failed == 1 and report.protocol == "tt"
    markdown = (out / "report.md").read_text()
    assert "## Failed requests" in markdown and items[1].id in markdown and "![latency histogram](latency_hist.png)" in markdown
    for png in ("latency_hist.png", "wer_by_item.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torchrun_shards_and_rank0_merges(server, tmp_path):
    out = tmp_path / "sharded"
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "eval_client"]
    done = run_cli(str(MANIFEST), "--base-url", server.url, "--limit", "7", "--out", str(out), module=torchrun)
    assert done.returncode == 0, done.stderr[-3000:]
    report = EvalReport.model_validate_json((out / "report.json").read_text())
    expected = [i.id for i in load_items(str(MANIFEST))[:7]]
    assert report.world_size == 2 and sorted(r.id for r in report.items) == sorted(expected)
    assert report.summary.items == 7 and report.summary.failed == 0
    assert not list(out.glob("shard-*.json"))
