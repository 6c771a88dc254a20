"""Bounded cost per request (issue 13): admission by audio seconds, body read deadline, lmms-eval's
burst, graceful shutdown. The admission rules as pure asyncio; the server's behaviour in-process on
the fake handler; slow uploads and SIGTERM against ``python -m server`` on real models."""

from __future__ import annotations

import asyncio
import base64
import io
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile
from conftest import TINY_EN_MODEL, manifest_rows
from fake_handler import FakeHandler
from test_server_app import FLAC, serving, start_held_request, whisper_tt_body

from bench.stress import trickle
from errors import AudioTooLong, QueueFull, ServiceUnavailable
from server.admission import Admission

pytestmark = pytest.mark.anyio
ROWS = {row["id"]: row for row in manifest_rows("asr_short")}
CLIP = ROWS["1272-141231-0000"]  # 4.65 s LibriSpeech dev-clean flac
LONG = manifest_rows("asr_long")[0]  # 2.7 min LibriVox reading


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def wav(seconds: float, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# --- the admission rules ---------------------------------------------------------------------------


async def test_requests_are_admitted_by_audio_seconds_first_come_first_served():
    admission = Admission(max_requests=10, max_audio_seconds=100, retry_after_seconds=3)
    order: list[str] = []

    async def request(name: str, seconds: float, hold: asyncio.Event) -> None:
        async with admission.admit(seconds, wait_s=10):
            order.append(name)
            await hold.wait()

    first_done, long_done, short_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    first = asyncio.ensure_future(request("first 60 s", 60, first_done))
    await asyncio.sleep(0)
    long = asyncio.ensure_future(request("long 90 s", 90, long_done))
    await asyncio.sleep(0.01)
    short = asyncio.ensure_future(request("short 5 s", 5, short_done))  # would fit now, but the long one came first
    await asyncio.sleep(0.01)
    assert order == ["first 60 s"] and admission.waiting == 2 and admission.audio_seconds == 60
    first_done.set()
    await asyncio.sleep(0.01)
    assert order == ["first 60 s", "long 90 s", "short 5 s"] and admission.audio_seconds == 95
    long_done.set(), short_done.set()
    await asyncio.gather(first, long, short)
    assert admission.audio_seconds == 0 and admission.requests == 0


async def test_over_the_whole_budget_is_413_and_a_wait_that_runs_out_is_503():
    admission = Admission(max_requests=10, max_audio_seconds=100, retry_after_seconds=3)
    with pytest.raises(AudioTooLong, match="MAX_AUDIO_SECONDS_IN_FLIGHT"):
        async with admission.admit(101, wait_s=10):
            pass
    async with admission.admit(80, wait_s=0):
        with pytest.raises(QueueFull) as refused:
            async with admission.admit(30, wait_s=0.05):
                pass
        assert refused.value.headers == {"Retry-After": "3"} and "after waiting 0.05 s" in str(refused.value)
        assert admission.waiting == 0
        async with admission.admit(20, wait_s=0):  # what fits is admitted at once
            assert admission.audio_seconds == 100


async def test_an_empty_server_admits_anything_within_the_budget_and_counts_requests_too():
    admission = Admission(max_requests=2, max_audio_seconds=100, retry_after_seconds=3)
    async with admission.admit(100, wait_s=0):
        assert admission.audio_seconds == 100
    async with admission.admit(1, wait_s=0), admission.admit(1, wait_s=0):
        with pytest.raises(QueueFull):  # two requests admitted: the count limit holds whatever the seconds
            async with admission.admit(1, wait_s=0.01):
                pass


async def test_a_waiter_that_leaves_gives_its_place_to_the_next():
    admission = Admission(max_requests=10, max_audio_seconds=100, retry_after_seconds=3)
    release = asyncio.Event()

    async def hold(seconds: float) -> None:
        async with admission.admit(seconds, wait_s=10):
            await release.wait()

    running = asyncio.ensure_future(hold(60))
    await asyncio.sleep(0)
    leaving = asyncio.ensure_future(hold(90))  # heads the line, then its client goes away
    await asyncio.sleep(0.01)
    staying = asyncio.ensure_future(hold(30))
    await asyncio.sleep(0.01)
    assert admission.waiting == 2
    leaving.cancel()
    await asyncio.sleep(0.01)
    assert admission.waiting == 0 and admission.audio_seconds == 90  # 60 + 30: the 30 s request moved up
    release.set()
    await asyncio.gather(running, staying)
    assert admission.audio_seconds == 0


async def test_draining_refuses_new_and_waiting_requests_then_stops_running_ones():
    admission = Admission(max_requests=10, max_audio_seconds=100, retry_after_seconds=3)
    async with admission.admit(90, wait_s=0):
        waiting = asyncio.ensure_future(_enter(admission, 50))
        await asyncio.sleep(0.01)
        admission.drain()
        with pytest.raises(ServiceUnavailable, match="shutting down"):
            await waiting
        with pytest.raises(ServiceUnavailable, match="shutting down"):
            await _enter(admission, 1)
        assert not admission.shutting_down.is_set()
        admission.stop_running()
        assert admission.shutting_down.is_set()


async def _enter(admission: Admission, seconds: float) -> None:
    async with admission.admit(seconds, wait_s=10):
        pass


# --- the server, in-process ------------------------------------------------------------------------


async def test_audio_over_the_in_flight_budget_is_413_before_decoding_and_admitted_seconds_are_metered():
    hold = threading.Event()
    handler = FakeHandler(hold=hold)
    async with serving(handler, max_audio_seconds_in_flight=60) as server:
        refused = await server.client.post("/predict", content=wav(61), headers={"Content-Type": "audio/wav"})
        running = await start_held_request(server)
        held = await server.metric("asr_admitted_audio_seconds")
        hold.set()
        assert (await running).status_code == 200
        after = await server.metric("asr_admitted_audio_seconds")
    assert refused.status_code == 413 and refused.json()["error_type"] == "audio_too_long"
    assert "MAX_AUDIO_SECONDS_IN_FLIGHT" in refused.json()["error"]
    assert held == pytest.approx(CLIP["duration"], abs=0.01) and after == 0
    assert len(handler.configs) == 1  # the refused file never reached the handler


async def test_not_audio_is_refused_from_its_header_even_when_the_server_is_full():
    hold = threading.Event()
    handler = FakeHandler(hold=hold)
    async with serving(handler, max_queue_depth=0, admission_wait_s=0) as server:
        running = await start_held_request(server)
        response = await server.client.post("/audio/transcriptions", json={"file": base64.b64encode(b"not audio at all" * 10).decode()})
        hold.set()
        await running
    assert response.status_code == 400 and "not a supported audio format" in response.json()["error"]["message"]


async def test_memory_held_by_waiting_and_admitted_requests_stays_within_the_budget():
    """Bodies and decoded audio are charged while a request waits or runs: a request that does not
    fit beside them is told to retry at once (its body would otherwise sit in memory while it
    waits); one that could never fit is 413; what leaves gives its memory back."""
    admission = Admission(max_requests=1, max_audio_seconds=100, retry_after_seconds=3)
    admission.max_bytes = 1000
    release = asyncio.Event()

    async def hold(nbytes: float) -> None:
        async with admission.admit(1, wait_s=10, nbytes=nbytes):
            await release.wait()

    running = asyncio.ensure_future(hold(300))
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(hold(300))  # over the request count: waits, its bytes held
    await asyncio.sleep(0.01)
    assert admission.held_bytes == 600 and admission.waiting == 1
    started = time.perf_counter()
    with pytest.raises(QueueFull, match="MEMORY_BUDGET_GIB") as refused:
        async with admission.admit(1, wait_s=10, nbytes=500):
            pass
    assert time.perf_counter() - started < 0.5 and refused.value.headers == {"Retry-After": "3"}
    with pytest.raises(AudioTooLong, match="MEMORY_BUDGET_GIB"):
        async with admission.admit(1, wait_s=10, nbytes=1001):
            pass
    release.set()
    await asyncio.gather(running, waiting)
    assert admission.held_bytes == 0 and admission.requests == 0


async def test_the_server_charges_each_request_its_body_and_audio_against_the_memory_budget():
    """``MEMORY_BUDGET_GIB`` leaves for requests what the loaded process and its worker do not use;
    a second upload that would not fit beside a running one gets 503 without waiting."""
    import psutil

    from server.admission import WORKING_MEMORY_BYTES, memory_budget_bytes, request_bytes

    assert 0 < memory_budget_bytes(None) <= 0.8 * psutil.virtual_memory().total
    hold = threading.Event()
    handler = FakeHandler(hold=hold)
    async with serving(handler, memory_budget_gib=1000, admission_wait_s=10) as server:
        admission = server.app.state.server.admission
        expected = 1000 * 2**30 - psutil.Process().memory_info().rss - WORKING_MEMORY_BYTES
        assert abs(admission.max_bytes - expected) < 2**28
        one_request = request_bytes(FLAC, CLIP["duration"], len(FLAC))
        admission.max_bytes = 1.5 * one_request  # room for one such request only
        running = await start_held_request(server)
        assert admission.held_bytes == pytest.approx(one_request, rel=0.01)
        started = time.perf_counter()
        refused = await server.client.post("/predict", content=FLAC, headers={"Content-Type": "audio/flac"})
        waited = time.perf_counter() - started
        hold.set()
        assert (await running).status_code == 200
        assert admission.held_bytes == 0
    assert refused.status_code == 503 and "MEMORY_BUDGET_GIB" in refused.json()["error"] and waited < 5


class FinishesDespiteCancellation(FakeHandler):
    """A handler stage that does not look at ``cancelled`` (as a diarization block does): it runs
    on after its client is gone, until ``release`` is set."""

    def __init__(self, release: threading.Event):
        super().__init__()
        self.release = release

    def transcribe_batch(self, requests: list) -> list:
        self.started.set()
        self.release.wait(20)
        return super().transcribe_batch(requests)


async def test_a_cancelled_request_holds_its_admission_until_its_worker_stops():
    """The client leaves while its request runs: it is answered 499 at once, but its audio and
    memory stay charged until the worker is really done with them."""
    from test_server_app import call_asgi

    release = threading.Event()
    handler = FinishesDespiteCancellation(release)
    async with serving(handler) as server:
        admission = server.app.state.server.admission
        sent = await asyncio.wait_for(call_asgi(server.app, "/predict", FLAC, "audio/flac", lambda: asyncio.to_thread(handler.started.wait, 10)), 20)
        held_after_leaving = (admission.requests, admission.audio_seconds, admission.held_bytes)
        release.set()
        for _ in range(500):
            if admission.requests == 0:
                break
            await asyncio.sleep(0.01)
        assert (admission.requests, admission.audio_seconds, admission.held_bytes) == (0, 0, 0)
    assert sent[0]["status"] == 499
    assert held_after_leaving[0] == 1 and held_after_leaving[1] == pytest.approx(CLIP["duration"], abs=0.01) and held_after_leaving[2] > len(FLAC)


async def test_300_simultaneous_whisper_tt_requests_with_default_settings_all_answered():
    """lmms-eval's whisper_tt sends every item at once and scores a 503 as an empty transcript."""
    async with serving() as server:
        body = whisper_tt_body()
        responses = await asyncio.gather(*(server.client.post("/audio/transcriptions", json=body) for _ in range(300)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 300, {s: statuses.count(s) for s in set(statuses)}
    assert all(r.json()["text"] for r in responses)


async def test_health_says_draining_once_shutdown_begins():
    async with serving() as server:
        server.app.state.server.admission.drain()
        health = await server.client.get("/health")
        refused = await server.client.post("/predict", content=FLAC, headers={"Content-Type": "audio/flac"})
    assert health.status_code == 503 and health.json() == {"status": "draining"}
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]


# --- python -m server on real models ---------------------------------------------------------------

TINY = {"ASR_MODEL": str(TINY_EN_MODEL), "TORCH_THREADS": "1", "CPU_THREADS": "1"}


def test_slow_uploads_hold_no_place_and_time_out_while_normal_clients_are_served(start_server):
    server = start_server({**TINY, "BODY_READ_TIMEOUT_S": "4", "MAX_QUEUE_DEPTH": "8", "ADMISSION_WAIT_S": "60"})
    clip = open(CLIP["audio"], "rb").read()
    with ThreadPoolExecutor(25) as pool:
        slow = [pool.submit(trickle, server.url) for _ in range(17)]
        time.sleep(1)  # the trickling uploads are in
        normal = [pool.submit(httpx.post, f"{server.url}/predict", content=clip, headers={"Content-Type": "audio/flac"}, timeout=120) for _ in range(8)]
        served = [future.result() for future in normal]
        replies = [future.result() for future in slow]
    assert [r.status_code for r in served] == [200] * 8 and all("universe" in r.json()["text"].lower() for r in served)
    assert all(reply.startswith(b"HTTP/1.1 408") and b"BODY_READ_TIMEOUT_S" in reply for reply in replies), replies[0][:300]


def in_flight(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "asr_inferences_in_flight":
                return sample.value
    return 0.0


def request_then_sigterm(server) -> httpx.Response:
    audio = open(LONG["audio"], "rb").read()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{server.url}/predict", content=audio, headers={"Content-Type": "application/octet-stream"}, timeout=300)
        deadline = time.monotonic() + 60
        while in_flight(server.url) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pending.done(), "the request finished before SIGTERM could be sent"
        server.process.send_signal(signal.SIGTERM)
        response = pending.result()
    server.process.wait(timeout=60)
    return response


def test_sigterm_lets_a_running_request_finish_then_exits(start_server):
    response = request_then_sigterm(start_server({**TINY, "SHUTDOWN_GRACE_S": "120"}))
    text = response.json()["text"].lower()
    assert response.status_code == 200 and "fairest creatures" in text and text.rstrip(".").endswith("thy image dies with thee")  # the whole reading


def test_sigterm_answers_503_when_the_grace_period_ends_first(start_server):
    server = start_server({**TINY, "SHUTDOWN_GRACE_S": "0.2"})
    response = request_then_sigterm(server)
    assert response.status_code == 503 and "shutting down" in response.json()["error"]
    assert int(response.headers["Retry-After"]) > 0
    assert "shutting down: no new requests" in server.log()
