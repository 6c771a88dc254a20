"""The server's protocols in-process: ``create_app`` on a fake handler (real request parsing and
audio decoding, made-up text), called through httpx's ``ASGITransport`` and the official ``openai``
SDK. Every route and error shape, streaming, cancellation and metrics; seconds, no model.
The live-Uvicorn tests on real models (test_server.py) keep the end-to-end checks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import httpx2
import numpy as np
import openai
import pytest
import soundfile
from conftest import manifest_rows
from fake_handler import FakeHandler
from openai.types.audio import TranscriptionDiarized
from scipy.io import wavfile

from config import ServerSettings
from server import create_app

pytestmark = pytest.mark.anyio
API_KEY = "in-process-key-7c1d"
CLIP = next(r for r in manifest_rows("asr_short") if r["id"] == "1272-141231-0000")  # 4.65 s flac
FLAC = open(CLIP["audio"], "rb").read()
SEGMENTS = 3  # the fake handler's segments for CLIP: one per 2 s


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def whisper_tt_body(stream: bool = False) -> dict[str, Any]:
    """Exactly what lmms-eval's whisper_tt client builds (float32 WAV at 16 kHz, base64), plus ``stream``."""
    samples, rate = soundfile.read(CLIP["audio"], dtype="float32")
    buffer = io.BytesIO()
    wavfile.write(buffer, rate, samples.astype(np.float32))
    return {"file": base64.b64encode(buffer.getvalue()).decode("utf-8"), "stream": stream}


class Server:
    def __init__(self, app: Any, client: httpx.AsyncClient, handler: Any):
        self.app, self.client, self.handler = app, client, handler

    async def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = (await self.client.get("/metrics", headers=auth())).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0


async def start_held_request(server: Server) -> "asyncio.Future[httpx.Response]":
    """A /predict request, returned once the fake handler runs it (it then waits for its ``hold``)."""
    running = asyncio.ensure_future(server.client.post("/predict", content=FLAC, headers={"Content-Type": "audio/flac"}))
    await asyncio.to_thread(server.handler.started.wait, 10)
    return running


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


@contextlib.asynccontextmanager
async def serving(handler: Any = None, factory: Callable[[], Any] | None = None, **settings: Any) -> AsyncIterator[Server]:
    handler = handler if handler is not None else FakeHandler()
    app = create_app(ServerSettings(_env_file=None, **settings), factory or (lambda: handler), load_in_background=factory is not None)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30) as client:
            yield Server(app, client, handler)


@contextlib.asynccontextmanager
async def openai_client(server: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=server.app), base_url="http://test") as http:
        yield openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=http, max_retries=0)


# --- the HF contract -------------------------------------------------------------------------------


async def test_hf_route_accepts_json_raw_and_multipart_and_leaves_diarization_to_the_handler():
    async with serving() as server:
        c = server.client
        responses = [
            await c.post("/predict", json={"inputs": base64.b64encode(FLAC).decode(), "parameters": {"language": "en"}}),
            await c.post("/", content=FLAC, params={"batch_size": "4"}, headers={"Content-Type": "audio/flac"}),
            await c.post("/", files={"file": ("clip.flac", FLAC)}, data={"parameters": json.dumps({"timestamps": "word"})}),
        ]
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.json()["duration"] == pytest.approx(CLIP["duration"], abs=0.01)
        assert response.json()["text"] == "Segment one. Segment two. Segment three."
    configs = server.handler.configs
    assert configs[0].language == "en" and configs[1].batch_size == 4 and configs[2].timestamps.value == "word"
    # The blog's behaviour: no explicit choice, the handler diarizes when it has a pipeline.
    assert [c.diarize for c in configs] == [None, None, None]


# --- OpenAI ----------------------------------------------------------------------------------------


async def test_openai_request_is_not_diarized_unless_asked_even_when_a_pipeline_is_loaded():
    async with serving(FakeHandler(diarization=True)) as server, openai_client(server) as client:
        srt = await client.audio.transcriptions.create(model="whisper-1", file=("clip.flac", FLAC), response_format="srt")
        asked = await client.audio.transcriptions.create(model="whisper-1", file=("clip.flac", FLAC), response_format="verbose_json", extra_body={"diarize": True})
        counted = await client.audio.transcriptions.create(model="whisper-1", file=("clip.flac", FLAC), response_format="verbose_json", extra_body={"num_speakers": 2})
    assert "SPEAKER" not in srt and srt.startswith("1\n00:00:00,000 --> 00:00:02,000\nSegment one.")
    assert [c.diarize for c in server.handler.configs] == [False, True, True]
    assert {s.speaker for s in asked.segments} == {"SPEAKER_00", "SPEAKER_01"} and asked.speakers == ["SPEAKER_00", "SPEAKER_01"]
    assert counted.segments[1].speaker == "SPEAKER_01"


async def test_openai_every_response_format():
    async with serving() as server, openai_client(server) as client:
        def create(**kwargs: Any) -> Any:
            return client.audio.transcriptions.create(model="whisper-1", file=("clip.flac", FLAC), **kwargs)

        plain = await create()
        text = await create(response_format="text")
        vtt = await create(response_format="vtt")
        verbose = await create(response_format="verbose_json", timestamp_granularities=["word"], language="en")
        translated = await client.audio.translations.create(model="whisper-1", file=("clip.flac", FLAC), response_format="verbose_json")
    assert plain.text == "Segment one. Segment two. Segment three." and text == plain.text + "\n"
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nSegment one.")
    assert verbose.language == "english" and not getattr(verbose, "segments", None) and [w.word for w in verbose.words][:2] == ["Segment", "one."]
    assert translated.task == "translate" and translated.text == plain.text


async def test_openai_diarized_json_parses_as_the_sdk_model_with_two_speakers():
    async with serving(FakeHandler(diarization=True)) as server, openai_client(server) as client:
        result = await client.audio.transcriptions.create(model="whisper-1", file=("call.flac", FLAC), response_format="diarized_json")
        raw = await server.client.post("/v1/audio/transcriptions", files={"file": ("call.flac", FLAC)}, data={"response_format": "diarized_json"})
    assert isinstance(result, TranscriptionDiarized)
    parsed = TranscriptionDiarized.model_validate(raw.json())  # every field the SDK model requires is there
    assert parsed.task == "transcribe" and parsed.usage.type == "duration" and parsed.usage.seconds == pytest.approx(CLIP["duration"], abs=0.01)
    assert {s.speaker for s in parsed.segments} == {"SPEAKER_00", "SPEAKER_01"} and parsed.segments[0].type == "transcript.text.segment"
    assert " ".join(s.text for s in parsed.segments) == parsed.text == result.text


async def test_openai_sdk_streams_deltas_then_done():
    async with serving() as server, openai_client(server) as client:
        stream = await client.audio.transcriptions.create(model="whisper-1", file=("clip.flac", FLAC), stream=True)
        events = [event async for event in stream]
        done_before = await server.metric("asr_time_to_first_text_seconds_count")
    assert [e.type for e in events] == ["transcript.text.delta"] * SEGMENTS + ["transcript.text.done"]
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == "Segment one. Segment two. Segment three."
    assert events[-1].usage.to_dict() == {"type": "duration", "seconds": pytest.approx(CLIP["duration"], abs=0.01)}
    assert done_before == 1


async def test_openai_diarized_stream_sends_speaker_segments_after_the_text():
    async with serving(FakeHandler(diarization=True)) as server, openai_client(server) as client:
        stream = await client.audio.transcriptions.create(model="whisper-1", file=("call.flac", FLAC), response_format="diarized_json", stream=True)
        events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds == ["transcript.text.delta"] * SEGMENTS + ["transcript.text.segment"] * SEGMENTS + ["transcript.text.done"]
    assert [e.speaker for e in events if e.type == "transcript.text.segment"] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]


@pytest.mark.parametrize("response_format", ["text", "srt", "vtt"])
async def test_openai_stream_of_a_plain_text_format_is_a_clear_400(response_format):
    async with serving() as server:
        response = await server.client.post("/v1/audio/transcriptions", files={"file": ("clip.flac", FLAC)}, data={"stream": "true", "response_format": response_format})
    assert response.status_code == 400 and response.json()["error"]["type"] == "bad_request"
    assert "stream" in response.json()["error"]["message"] and response_format in response.json()["error"]["message"]


async def test_openai_stream_of_undecodable_audio_is_a_400_before_any_event():
    async with serving() as server:
        response = await server.client.post("/v1/audio/transcriptions", files={"file": ("clip.wav", b"RIFF-not-audio")}, data={"stream": "true"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "audio_decode_error"


async def test_openai_chunking_strategy_auto_or_plain_server_vad_accepted_tuning_refused():
    async with serving() as server, openai_client(server) as client:
        auto = await client.audio.transcriptions.create(model="whisper-1", file=("clip.flac", FLAC), chunking_strategy="auto")
        vad = await client.audio.transcriptions.create(model="whisper-1", file=("clip.flac", FLAC), chunking_strategy={"type": "server_vad"})
        with pytest.raises(openai.UnprocessableEntityError) as raised:
            await client.audio.transcriptions.create(model="whisper-1", file=("clip.flac", FLAC), chunking_strategy={"type": "server_vad", "threshold": 0.3})
    assert auto.text == vad.text
    assert "chunking_strategy" in raised.value.message and "threshold" in raised.value.message


async def test_openai_known_speakers_and_contradictions_are_refused_clearly():
    async with serving(FakeHandler(diarization=True)) as server:
        post = server.client.post
        known = await post("/v1/audio/transcriptions", files={"file": ("a.flac", FLAC)}, data={"known_speaker_names[]": "alice", "known_speaker_references[]": ["data:audio/wav;base64,AA==", "data:audio/wav;base64,AA=="], "response_format": "diarized_json"})
        contradiction = await post("/v1/audio/transcriptions", files={"file": ("a.flac", FLAC)}, data={"diarize": "false", "response_format": "diarized_json"})
        translation = await post("/v1/audio/translations", files={"file": ("a.flac", FLAC)}, data={"response_format": "diarized_json"})
    assert known.status_code == 422 and "2 reference(s) for 1 known_speaker_names" in known.json()["error"]["message"]
    assert contradiction.status_code == 422 and "diarize is false" in contradiction.json()["error"]["message"]
    assert translation.status_code == 422 and "translations" in translation.json()["error"]["message"]
    assert server.handler.configs == []


# --- tt-media-server ---------------------------------------------------------------------------------


async def test_whisper_tt_body_plain_and_streamed_as_ndjson():
    async with serving() as server:
        plain = await server.client.post("/audio/transcriptions", json=whisper_tt_body())
        streamed = await server.client.post("/v1/audio/transcriptions", json=whisper_tt_body(stream=True),
                                            headers={"Accept": "application/json", "Authorization": "Bearer your-secret-key"})
    assert plain.status_code == 200 and plain.json()["text"] == "Segment one. Segment two. Segment three."
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert [line["chunk_id"] for line in lines] == list(range(SEGMENTS + 1))
    assert "".join(line["text"] for line in lines[:-1]) == lines[-1]["text"] == plain.json()["text"]
    assert lines[-1]["final"] is True and lines[-1]["duration"] == pytest.approx(CLIP["duration"], abs=0.01)


async def test_tt_errors_name_the_file_field():
    async with serving() as server:
        for body in ({"file": "not base64 !!"}, {"file": ""}, {"file": "not base64 !!", "stream": True}):
            response = await server.client.post("/audio/transcriptions", json=body)
            message = response.json()["error"]["message"]
            assert response.status_code == 400 and "'file'" in message and "'inputs'" not in message, (body, message)


# --- errors, paths, auth, metrics ----------------------------------------------------------------


async def test_unknown_paths_and_methods_answer_our_error_shape_and_are_counted():
    async with serving() as server:
        missing = await server.client.post("/v1/audio/speech", json={})
        wrong_method = await server.client.get("/predict")
        assert await server.metric("asr_requests_total", route="unmatched", method="POST", status="404") == 1
        assert await server.metric("asr_requests_total", route="/predict", method="GET", status="405") == 1
        assert await server.metric("asr_errors_total", kind="not_found") == 1
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found" and "detail" not in missing.json()
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "GET is not allowed on /predict; use POST", "error_type": "method_not_allowed"}
    assert wrong_method.headers["Allow"] == "POST"


async def test_doubled_slashes_reach_the_route():
    async with serving() as server:
        response = await server.client.post("/v1//audio//transcriptions", json=whisper_tt_body())
        assert await server.metric("asr_requests_total", route="/v1/audio/transcriptions", method="POST", status="200") == 1
    assert response.status_code == 200 and response.json()["text"]


async def test_head_health_for_load_balancers():
    async with serving() as server:
        assert (await server.client.head("/health")).status_code == 200
        assert (await server.client.get("/health")).json() == {"status": "ok"}


async def test_json_nested_ten_thousand_deep_is_a_clear_400_on_every_json_input():
    deep = "[" * 10_000 + "]" * 10_000
    async with serving() as server:
        post = server.client.post
        responses = [
            await post("/predict", content=deep, headers={"Content-Type": "application/json"}),
            await post("/audio/transcriptions", content=deep, headers={"Content-Type": "application/json"}),
            await post("/predict", files={"file": ("a.flac", FLAC)}, data={"parameters": deep}),
            await post("/v1/audio/transcriptions", files={"file": ("a.flac", FLAC)}, data={"chunking_strategy": "{" + '"a":{' * 10_000 + "}" * 10_001}),
        ]
    for response in responses:
        assert response.status_code in (400, 422), response.text
        assert "nested too deeply" in response.text


async def test_api_key_guards_every_route_but_health():
    async with serving(api_key=API_KEY) as server:
        c = server.client
        for method, path in (("POST", "/"), ("POST", "/predict"), ("POST", "/v1/audio/transcriptions"), ("POST", "/audio/translations"), ("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
                response = await c.request(method, path, headers=headers, content=b"x")
                assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer", (method, path, headers)
                assert API_KEY not in response.text
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/openapi.json", headers=auth())).json()["paths"].keys() >= {"/", "/predict", "/v1/audio/transcriptions", "/audio/transcriptions", "/health", "/metrics"}
        assert "swagger" in (await c.get("/docs", headers=auth())).text.lower()
        ok = await c.post("/predict", content=FLAC, headers={**auth(), "Content-Type": "audio/flac"})
    assert ok.status_code == 200


async def test_unsupported_content_types_and_bad_bodies():
    async with serving() as server:
        post = server.client.post
        text = await post("/predict", content=b"hello", headers={"Content-Type": "text/plain"})
        audio_text = await post("/audio/transcriptions", content=b"hello", headers={"Content-Type": "text/plain"})
        not_json = await post("/predict", content=b"{not json", headers={"Content-Type": "application/json"})
        array = await post("/audio/transcriptions", json=[1, 2])
        unknown = await post("/audio/transcriptions", json={"file": "AAAA", "speed": 2})
        no_file = await post("/v1/audio/transcriptions", files={"audio": ("a.flac", FLAC)})
    assert (text.status_code, text.json()["error_type"]) == (415, "unsupported_media_type")
    assert (audio_text.status_code, audio_text.json()["error"]["type"]) == (415, "unsupported_media_type")
    assert (not_json.status_code, not_json.json()["error_type"]) == (400, "bad_request")
    assert array.status_code == 400 and "JSON object" in array.json()["error"]["message"]
    assert unknown.status_code == 422 and "speed" in unknown.json()["error"]["message"]
    assert no_file.status_code == 400 and "'file'" in no_file.json()["error"]["message"]


async def test_upload_limit_413():
    async with serving(max_upload_bytes=1000) as server:
        declared = await server.client.post("/predict", content=FLAC, headers={"Content-Type": "audio/flac"})

        async def chunked() -> AsyncIterator[bytes]:
            for start in range(0, 5000, 500):
                yield FLAC[start:start + 500]

        streamed = await server.client.post("/predict", content=chunked(), headers={"Content-Type": "audio/flac"})
    assert declared.status_code == streamed.status_code == 413 and streamed.json()["error_type"] == "payload_too_large"


async def test_a_full_server_answers_503_after_the_admission_wait_while_whisper_tt_waits_its_turn():
    hold = threading.Event()
    handler = FakeHandler(hold=hold)
    async with serving(handler, max_queue_depth=0, admission_wait_s=0.2) as server:
        first = await start_held_request(server)
        refused = await server.client.post("/predict", content=FLAC, headers={"Content-Type": "audio/flac"})
        # lmms-eval's whisper_tt turns a 503 into an empty transcript: its route waits (TT_ADMISSION_WAIT_S).
        waiting = asyncio.ensure_future(server.client.post("/audio/transcriptions", json=whisper_tt_body()))
        await asyncio.sleep(0.5)
        assert not waiting.done() and await server.metric("asr_admission_waiting") == 1
        hold.set()
        served, tt = await first, await waiting
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0 and refused.json()["error_type"] == "queue_full"
    assert "after waiting 0.2 s" in refused.json()["error"]
    assert served.status_code == tt.status_code == 200 and tt.json()["text"]


async def health_after_loading(server: Server) -> httpx.Response:
    """/health once it stops answering 503 (loading), polled for up to 2 s."""
    for _ in range(100):
        response = await server.client.get("/health")
        if response.status_code != 503:
            return response
        await asyncio.sleep(0.02)
    return response


async def test_health_is_503_with_retry_after_until_the_models_are_loaded():
    gate = threading.Event()

    def slow() -> Any:
        gate.wait(10)
        return FakeHandler()

    async with serving(factory=slow) as server:
        loading = await server.client.get("/health")
        gate.set()
        ready = await health_after_loading(server)
        served = await server.client.post("/predict", content=FLAC, headers={"Content-Type": "audio/flac"})
    assert loading.status_code == 503 and loading.json() == {"status": "loading"} and int(loading.headers["Retry-After"]) > 0
    assert ready.status_code == 200 and ready.json() == {"status": "ok"} and served.status_code == 200


async def test_models_loading_then_failed_load_without_secrets():
    gate = threading.Event()

    def failing() -> Any:
        gate.wait(10)
        raise RuntimeError("cannot reach the hub with token hf_secret123456")

    async with serving(factory=failing) as server:
        loading = await server.client.get("/health")
        refused = await server.client.post("/predict", content=FLAC, headers={"Content-Type": "audio/flac"})
        gate.set()
        failed = await health_after_loading(server)
    assert loading.status_code == 503 and loading.headers["Retry-After"]
    assert refused.status_code == 503 and refused.json()["error_type"] == "unavailable"
    assert failed.status_code == 500 and "cannot reach the hub" in failed.json()["error"]


async def test_handler_crash_is_a_500_without_traceback():
    class Crashing(FakeHandler):
        def transcribe_batch(self, requests: list[Any]) -> list[Any]:
            raise RuntimeError("CUDA exploded")

    async with serving(Crashing(), micro_batch_size=1) as server:
        response = await server.client.post("/predict", content=FLAC, headers={"Content-Type": "audio/flac"})
    assert response.status_code == 500 and response.json() == {"error": "inference failed: RuntimeError: CUDA exploded", "error_type": "inference_error"}


# --- client disconnects ---------------------------------------------------------------------------


async def call_asgi(app: Any, path: str, body: bytes, content_type: str, disconnect_after: Callable[[], Any], sent: list[dict] | None = None) -> list[dict]:
    """Drives the app as a server would for a client that sends ``body`` and then goes away once
    ``disconnect_after()`` returns; returns what the app sent."""
    sent = [] if sent is None else sent
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await disconnect_after()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("test", 80), "state": {}}
    await app(scope, receive, send)
    return sent


async def test_client_gone_mid_stream_cancels_its_decoding():
    hold = threading.Event()  # never set: only the cancellation can end the request
    handler = FakeHandler(hold=hold)
    async with serving(handler) as server:
        body = json.dumps(whisper_tt_body(stream=True)).encode()
        sent: list[dict] = []

        async def first_text_sent() -> None:
            while not any(m.get("body") for m in sent):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(call_asgi(server.app, "/audio/transcriptions", body, "application/json", first_text_sent, sent), 20)
        for _ in range(200):
            if server.handler.cancelled and server.handler.cancelled[0].is_set() and await server.metric("asr_inferences_in_flight") == 0:
                break
            await asyncio.sleep(0.02)
        assert handler.cancelled[0].is_set()  # the decoding thread was told to stop …
        assert await server.metric("asr_inferences_in_flight") == 0  # … and did
        assert await server.metric("asr_errors_total", kind="client_closed_request") == 1
    assert not hold.is_set() and sent[0]["status"] == 200 and json.loads(sent[1]["body"]) == {"text": "Segment one.", "chunk_id": 0}


async def test_client_gone_while_waiting_cancels_a_plain_request():
    hold = threading.Event()
    handler = FakeHandler(hold=hold)
    async with serving(handler) as server:
        await asyncio.wait_for(call_asgi(server.app, "/predict", FLAC, "audio/flac", lambda: asyncio.to_thread(handler.started.wait, 10)), 20)
        assert await server.metric("asr_errors_total", kind="client_closed_request") == 1
        assert await server.metric("asr_requests_total", route="/predict", method="POST", status="499") == 1
    assert handler.cancelled[0].is_set()


async def test_client_gone_mid_upload_is_a_client_disconnect_not_a_500():
    async with serving() as server:
        sent: list[dict] = []
        chunks = [{"type": "http.request", "body": FLAC[:1000], "more_body": True}, {"type": "http.disconnect"}]

        async def receive() -> dict:
            return chunks.pop(0) if chunks else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/predict", "raw_path": b"/predict",
                 "query_string": b"", "root_path": "", "headers": [(b"content-type", b"audio/flac")], "client": ("127.0.0.1", 1), "server": ("test", 80), "state": {}}
        await server.app(scope, receive, send)
        assert await server.metric("asr_errors_total", kind="client_closed_request") == 1
        assert await server.metric("asr_requests_total", route="/predict", method="POST", status="500") == 0
    assert sent[0]["status"] == 499


# --- the eval client's --stream mode against this server ---------------------------------------------


@pytest.mark.parametrize("protocol", ["openai", "tt"])
async def test_eval_client_stream_mode_reads_both_streams_and_times_the_first_text(protocol, monkeypatch):
    from eval_client.client import ASRClient, ClientConfig
    from eval_client.data import SAMPLING_RATE

    samples, rate = soundfile.read(CLIP["audio"], dtype="float32")
    assert rate == SAMPLING_RATE
    async with serving() as server:
        client = ASRClient(ClientConfig(base_url="http://test/v1/", protocol=protocol, stream=True, api_key=None, max_retries=0))
        monkeypatch.setattr(client, "http_client", lambda: httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), timeout=30))
        outcome = (await client.transcribe_many([(samples, rate)]))[0]
    assert outcome.ok, outcome.error
    assert outcome.text == "Segment one. Segment two. Segment three."
    assert outcome.first_text_s is not None and 0 < outcome.first_text_s <= outcome.latency_s
    with pytest.raises(ValueError, match="stream"):
        ClientConfig(protocol="hf", stream=True)


async def test_a_call_abandoned_while_it_runs_leaves_no_unread_error():
    """A live session closed twice over (its task cancelled while it waits for the running call to
    stop) once left the call's RequestCancelled unread: asyncio logged "Future exception was never
    retrieved" with a traceback for a client that simply went away."""
    import gc

    from server.inference_queue import InferenceQueue

    unread: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unread.append(context))
    queue = InferenceQueue(workers=1)
    started, release = threading.Event(), threading.Event()

    def decode() -> None:
        started.set()
        release.wait(10)
        raise RuntimeError("stopped: the client went away")

    caller = asyncio.ensure_future(queue.run(decode))
    while not started.is_set():
        await asyncio.sleep(0.01)
    caller.cancel()
    await asyncio.sleep(0.05)  # the caller now waits for the running call to stop
    caller.cancel()
    release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0.1)
    queue.shutdown()
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert not unread and queue.waiting == queue.running == 0
