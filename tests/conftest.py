"""Shared fixtures: the real dev data, real models, and live servers on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from bench.data import data_dir, manifest_rows  # noqa: E402,F401  (manifest_rows: tests import it from here)

DATA_DIR = data_dir()
MODELS_DIR = REPO_DIR / "models"
BASE_MODEL = MODELS_DIR / "whisper-base"
TINY_EN_MODEL = MODELS_DIR / "whisper-tiny.en"
DIARIZATION_MODEL = MODELS_DIR / "pyannote-diarization"


@pytest.fixture(name="data_dir", scope="session")
def data_dir_fixture() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def jfk_flac() -> bytes:
    return (DATA_DIR / "asr_short" / "jfk" / "jfk_openai.flac").read_bytes()


@pytest.fixture(scope="session")
def base_settings():
    from config import ModelSettings

    return ModelSettings(_env_file=None, asr_model=str(BASE_MODEL), asr_backend="transformers", assistant_model=None, diarization_model=None, hf_token=None)


@pytest.fixture(scope="session")
def handler(base_settings):
    """One real Whisper-base handler (no assistant, no diarization) for the whole session."""
    from handler import EndpointHandler

    return EndpointHandler(str(REPO_DIR), settings=base_settings)


@pytest.fixture(scope="session")
def diarizing_handler(tmp_path_factory):
    """One real handler (Whisper base + the offline diarization pipeline) for the session; its
    voiceprint store lives in a temporary directory, never in the repository."""
    from config import ModelSettings
    from handler import EndpointHandler

    voiceprints = tmp_path_factory.mktemp("voiceprints") / "voiceprints.sqlite3"
    settings = ModelSettings(_env_file=None, asr_model=str(BASE_MODEL), asr_backend="transformers", diarization_model=str(DIARIZATION_MODEL), assistant_model=None, hf_token=None, voiceprints_db=str(voiceprints))
    return EndpointHandler(str(REPO_DIR), settings=settings)


@pytest.fixture(scope="session")
def diarizer(diarizing_handler):
    return diarizing_handler.diarizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def our_server(port: int) -> list[str]:
    """What ``make serve`` runs."""
    return [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port)]


class LiveServer:
    """A server (``python -m server`` unless ``command(port)`` says otherwise) in a subprocess on a
    free loopback port, ready once its ``/health`` answers 200."""

    def __init__(self, env: dict[str, str], startup_timeout: float = 300.0, command: Callable[[int], list[str]] = our_server):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = REPO_DIR / ".pytest_cache" / f"server-{self.port}.log"
        self.log_path.parent.mkdir(exist_ok=True)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self._log = self.log_path.open("w")
        self.startup_health: list[int] = []  # /health status codes seen while the server started
        self.process = subprocess.Popen(command(self.port), cwd=REPO_DIR, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.startup_health.append(httpx.get(f"{self.url}/health", timeout=2).status_code)
                if self.startup_health[-1] == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready after {startup_timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()[-5000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


@pytest.fixture(scope="session")
def start_server() -> Iterator:
    """Factory: ``start_server({"ENV": "value"})`` → a ready LiveServer, stopped at session end."""
    servers: list[LiveServer] = []

    def start(env: dict[str, str] | None = None) -> LiveServer:
        defaults = {"ASR_MODEL": str(BASE_MODEL), "ASSISTANT_MODEL": "", "DIARIZATION_MODEL": "", "API_KEY": ""}
        server = LiveServer({**defaults, **(env or {})})
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# The huggingface-inference-toolkit is not on PyPI and no test machine reaches GitHub: the tests that
# run its real app need a checkout of its public source named by TOOLKIT_SRC (`make toolkit-test`).
# Without one they are deselected, and the run's header says so, rather than skipped as if passing.
TOOLKIT_SRC = os.environ.get("TOOLKIT_SRC")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TOOLKIT_SRC:
        return
    live = [item for item in items if item.get_closest_marker("toolkit_live")]
    if live:
        items[:] = [item for item in items if item not in live]
        config.hook.pytest_deselected(items=live)


def pytest_report_header(config: pytest.Config) -> str:
    if TOOLKIT_SRC:
        return f"toolkit_live: the huggingface-inference-toolkit app from {TOOLKIT_SRC}"
    return "toolkit_live: deselected (set TOOLKIT_SRC to a huggingface-inference-toolkit checkout: make toolkit-test)"
