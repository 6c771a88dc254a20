"""scripts/deploy_endpoint.py against a local HTTP server that plays the Inference Endpoints API and
records what it is sent: the request must be a custom-handler endpoint with the blog's env vars and
HF_TOKEN as a secret, and the token must never be printed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import REPO_DIR

TOKEN = "hf_deploytestsecret987654321"


class FakeEndpointsAPI(ThreadingHTTPServer):
    """POST creates the endpoint (state ``pending``); GETs report it ``running`` at this server's
    own URL, whose /health answers 200, so ``endpoint.wait()`` completes."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Recorder)
        self.requests: list[dict] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.created: dict | None = None

    def endpoint(self, state: str) -> dict:
        body = self.created or {}
        return {
            "name": body.get("name"),
            "type": body.get("type"),
            "model": {**body.get("model", {}), "revision": body.get("model", {}).get("revision")},
            "compute": body.get("compute"),
            "provider": body.get("provider"),
            "status": {"state": state, "url": self.url if state == "running" else None, "createdAt": "2025-01-01T00:00:00.000Z", "updatedAt": "2025-01-01T00:00:00.000Z"},
            "healthRoute": "/health",
        }


class Recorder(BaseHTTPRequestHandler):
    server: FakeEndpointsAPI

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"method": "POST", "path": self.path, "authorization": self.headers.get("Authorization"), "body": body})
        self.server.created = body
        self._answer(200, self.server.endpoint("pending"))

    def do_GET(self) -> None:
        self.server.requests.append({"method": "GET", "path": self.path, "authorization": self.headers.get("Authorization")})
        self._answer(200, {"status": "ok"} if self.path == "/health" else self.server.endpoint("running"))

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def api() -> Iterator[FakeEndpointsAPI]:
    server = FakeEndpointsAPI()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def deploy(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_DISABLE_TELEMETRY": "1", **({"HF_TOKEN": token} if token else {})}
    return subprocess.run([sys.executable, str(REPO_DIR / "scripts" / "deploy_endpoint.py"), *args], env=env, capture_output=True, text=True, timeout=120)


def test_creates_a_custom_handler_endpoint_with_the_blog_env_and_a_token_secret(api):
    result = deploy("--api-url", f"{api.url}/v2", "--namespace", "alice", "--repository", "alice/asr-diarization-endpoint", "--name", "asr-test", "--env", "MAX_AUDIO_SECONDS=3600")
    assert result.returncode == 0, result.stderr
    [create] = api.requests
    assert create["method"] == "POST" and create["path"] == "/v2/endpoint/alice"
    assert create["authorization"] == f"Bearer {TOKEN}"
    body = create["body"]
    assert body["name"] == "asr-test" and body["type"] == "authenticated"
    assert body["model"]["repository"] == "alice/asr-diarization-endpoint"
    assert body["model"]["task"] == "custom" and body["model"]["framework"] == "pytorch"
    assert body["model"]["env"] == {
        "ASR_MODEL": "openai/whisper-large-v3",
        "ASSISTANT_MODEL": "distil-whisper/distil-large-v3",
        "DIARIZATION_MODEL": "pyannote/speaker-diarization-3.1",
        "MAX_AUDIO_SECONDS": "3600",
    }
    assert body["model"]["secrets"] == {"HF_TOKEN": TOKEN}
    assert body["compute"]["accelerator"] == "gpu" and body["compute"]["instanceType"] == "nvidia-a10g"
    assert body["compute"]["scaling"] == {"minReplica": 0, "maxReplica": 1, "scaleToZeroTimeout": 15}
    assert body["provider"] == {"vendor": "aws", "region": "us-east-1"}
    assert "alice/asr-test: pending" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


def test_wait_polls_until_running_and_prints_the_url(api):
    result = deploy("--api-url", f"{api.url}/v2", "--namespace", "alice", "--repository", "alice/repo", "--assistant-model", "", "--diarization-model", "", "--wait", "--poll-seconds", "0.1", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert api.requests[0]["body"]["model"]["env"] == {"ASR_MODEL": "openai/whisper-large-v3"}
    assert [r["path"] for r in api.requests[1:]] == ["/v2/endpoint/alice/asr-diarization", "/health"]
    assert f"running at {api.url}" in result.stdout


def test_refuses_to_run_without_a_token_and_dry_run_masks_it(api):
    result = deploy("--api-url", f"{api.url}/v2", "--namespace", "alice", "--repository", "alice/repo", token=None)
    assert result.returncode == 2 and "HF_TOKEN" in result.stderr and api.requests == []
    result = deploy("--repository", "alice/repo", "--dry-run")
    assert result.returncode == 0 and TOKEN not in result.stdout and api.requests == []
    shown = json.loads(result.stdout)
    assert shown["secrets"] == {"HF_TOKEN": "***"} and shown["env"]["DIARIZATION_MODEL"] == "pyannote/speaker-diarization-3.1"


def test_an_api_error_is_reported_without_the_token(api):
    # Nothing listens on the API's path prefix below: a 404 from the fake server.
    api.RequestHandlerClass = type("NotFound", (Recorder,), {"do_POST": lambda self: self._answer(404, {"error": f"no such namespace (token {TOKEN})"})})
    result = deploy("--api-url", f"{api.url}/v2", "--namespace", "nobody", "--repository", "alice/repo")
    assert result.returncode == 1 and "error:" in result.stderr
    assert TOKEN not in result.stdout + result.stderr
