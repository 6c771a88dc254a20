"""Live transcription (/v1/realtime, OpenAI's Realtime transcription protocol): the protocol in-process
(FastAPI's TestClient WebSocket) on real Whisper base and real speech, the speakers of a 2-speaker
call with the real diarization pipeline, and the official ``openai`` SDK's realtime client and a
browser-style client (subprotocol auth) against a live server."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
import soundfile
from conftest import manifest_rows
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from audio import load_audio
from config import ServerSettings
from eval_client.live import pcm16_chunks, realtime_url
from eval_client.metrics import word_counts
from server import create_app
from diarization.speaker_identification import SessionSpeakers

API_KEY = "live-key-3f9a"
ROUTE = "/v1/realtime?intent=transcription"
JFK = next(r for r in manifest_rows("asr_short") if r["audio"].endswith("jfk_openai.flac"))
CALL = next(r for r in manifest_rows("asr_short") if r["id"] == "pyannote_sample")
MANUAL = {"type": "transcription_session.update", "session": {"turn_detection": None}}


def samples(row: dict) -> np.ndarray:
    return load_audio(open(row["audio"], "rb").read()).samples


def appends(row: dict, tail_s: float = 0.0) -> list[dict[str, Any]]:
    """The clip as pcm16 at 24 kHz in 100 ms append events (then ``tail_s`` of silence)."""
    audio = np.concatenate([samples(row), np.zeros(round(tail_s * 16000), np.float32)])
    return [{"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()} for chunk in pcm16_chunks(audio, 16000)]


def wer(reference: str, hypothesis: str) -> float:
    return word_counts(reference, hypothesis).error_rate


def until(ws: Any, kind: str, seen: list[dict] | None = None) -> dict:
    """Events up to the first of type ``kind`` (kept in ``seen``); an unexpected error fails the test."""
    while True:
        message = ws.receive_json()
        if seen is not None:
            seen.append(message)
        if message["type"] == kind:
            return message
        assert message["type"] != "error", message


def transcripts(ws: Any, count: int, seen: list[dict]) -> list[dict]:
    return [until(ws, "conversation.item.input_audio_transcription.completed", seen) for _ in range(count)]


def send_and_commit(ws: Any, row: dict) -> None:
    """Manual turns (no server VAD): the clip appended, then committed."""
    ws.send_json(MANUAL)
    until(ws, "transcription_session.updated")
    for append in appends(row):
        ws.send_json(append)
    ws.send_json({"type": "input_audio_buffer.commit"})


@pytest.fixture(scope="module")
def app(handler):
    # Partial text off (its timing depends on the machine's speed); one test turns it on.
    settings = ServerSettings(_env_file=None, api_key=API_KEY, realtime_partial_interval_s=0, realtime_max_sessions=2)
    return create_app(settings, lambda: handler, load_in_background=False)


@pytest.fixture(scope="module")
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def connect(client: TestClient, **kwargs: Any) -> Any:
    kwargs.setdefault("headers", {"Authorization": f"Bearer {API_KEY}"})
    return client.websocket_connect(ROUTE, **kwargs)


def test_ga_session_created_then_updated_with_what_was_asked(client):
    with connect(client) as ws:
        created = ws.receive_json()
        assert created["type"] == "session.created"
        assert created["session"]["type"] == "transcription"
        assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        ws.send_json({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1", "language": "english"}, "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}}}})
        updated = until(ws, "session.updated")["session"]["audio"]["input"]
        assert updated["format"] == {"type": "audio/pcmu"}
        assert updated["transcription"]["language"] == "en"
        assert updated["turn_detection"]["silence_duration_ms"] == 300
        assert updated["turn_detection"]["threshold"] == 0.5  # untouched fields keep their values


def test_beta_session_by_header_and_turn_detection_off(client):
    with connect(client, headers={"Authorization": f"Bearer {API_KEY}", "OpenAI-Beta": "realtime=v1"}) as ws:
        created = ws.receive_json()
        assert created["type"] == "transcription_session.created"
        assert created["session"]["input_audio_format"] == "pcm16"
        ws.send_json({**MANUAL, "event_id": "evt_1"})
        updated = until(ws, "transcription_session.updated")["session"]
        assert updated["turn_detection"] is None
        assert updated["input_audio_format"] == "pcm16"


def test_append_commit_transcribes_jfk_and_clear_empties_the_buffer(client):
    with connect(client) as ws:
        ws.receive_json()
        send_and_commit(ws, JFK)
        committed = until(ws, "input_audio_buffer.committed")
        seen: list[dict] = []
        completed = until(ws, "conversation.item.input_audio_transcription.completed", seen)
        assert completed["item_id"] == committed["item_id"]
        assert wer(JFK["text"], completed["transcript"]) <= 0.1, completed["transcript"]
        assert completed["usage"] == {"type": "duration", "seconds": pytest.approx(11.0, abs=0.1)}
        assert completed["speaker"] is None  # no diarization model
        deltas = "".join(e["delta"] for e in seen if e["type"].endswith(".delta"))
        assert deltas == completed["transcript"]  # the deltas add up to the final text
        # A cleared buffer holds nothing to commit.
        for event in appends(JFK)[:20]:
            ws.send_json(event)
        ws.send_json({"type": "input_audio_buffer.clear"})
        until(ws, "input_audio_buffer.cleared")
        ws.send_json({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
        error = ws.receive_json()
        assert error["type"] == "error"
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        assert error["error"]["event_id"] == "evt_commit"


def test_server_vad_cuts_jfk_into_turns_that_transcribe_it(client):
    with connect(client) as ws:
        ws.receive_json()
        for event in appends(JFK, tail_s=1.0):
            ws.send_json(event)
        seen: list[dict] = []
        started = until(ws, "input_audio_buffer.speech_started", seen)
        stopped = until(ws, "input_audio_buffer.speech_stopped", seen)
        assert stopped["item_id"] == started["item_id"]
        assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"] <= 11000 + 1000
        texts: list[str] = []
        while sum(len(t.split()) for t in texts) < 20:  # JFK's 22 words, in the turns its pauses cut
            texts.append(until(ws, "conversation.item.input_audio_transcription.completed", seen)["transcript"])
        assert wer(JFK["text"], " ".join(texts)) <= 0.1, texts
        committed = [e for e in seen if e["type"] == "input_audio_buffer.committed"]
        assert len(committed) >= 2  # the speech's pauses end turns
        assert committed[1]["previous_item_id"] == committed[0]["item_id"]


def test_g711_ulaw_at_8khz_transcribes(client):
    audio = samples(JFK)
    import soxr

    buffer = io.BytesIO()
    soundfile.write(buffer, soxr.resample(audio, 16000, 8000), 8000, format="RAW", subtype="ULAW")
    ulaw = buffer.getvalue()
    with connect(client) as ws:
        ws.receive_json()
        ws.send_json({"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw", "turn_detection": None}})
        until(ws, "transcription_session.updated")
        for start in range(0, len(ulaw), 800):
            ws.send_json({"type": "input_audio_buffer.append", "audio": base64.b64encode(ulaw[start : start + 800]).decode()})
        ws.send_json({"type": "input_audio_buffer.commit"})
        completed = until(ws, "conversation.item.input_audio_transcription.completed")
        assert wer(JFK["text"], completed["transcript"]) <= 0.1, completed["transcript"]


@pytest.mark.parametrize("event, code, param, words", [
    ({"type": "input_audio_buffer.append", "audio": "not base64!"}, "invalid_value", "audio", "base64"),
    ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\x03").decode()}, "audio_decode_error", None, "2-byte samples"),
    ({"type": "input_audio_buffer.append"}, "invalid_value", "audio", "needs 'audio'"),
    ({"type": "response.create"}, "invalid_value", "type", "unknown event type 'response.create'"),
    ({"type": "transcription_session.update", "session": {"input_audio_format": "mp3"}}, "invalid_value", "session", "input_audio_format"),
    ({"type": "transcription_session.update", "session": {"turn_detection": {"type": "semantic_vad"}}}, "invalid_value", "session", "semantic_vad"),
    ({"type": "session.update", "session": {"type": "realtime"}}, "invalid_value", "session", "transcription sessions only"),
    ({"type": "transcription_session.update", "session": {"input_audio_transcription": {"language": "klingon"}}}, "invalid_value", "session", "unknown language"),
])
def test_bad_events_get_an_error_event_and_the_session_goes_on(client, event, code, param, words):
    with connect(client) as ws:
        ws.receive_json()
        ws.send_json({**event, "event_id": "evt_bad"})
        error = ws.receive_json()
        assert error["type"] == "error", error
        assert error["error"]["code"] == code
        assert error["error"]["param"] == param
        assert error["error"]["event_id"] == "evt_bad"
        assert error["error"]["type"] == "invalid_request_error"
        assert words in error["error"]["message"]
        ws.send_json(MANUAL)  # still served
        assert until(ws, "transcription_session.updated")["session"]["turn_detection"] is None


def test_text_that_is_not_json_or_binary_frames_get_error_events(client):
    with connect(client) as ws:
        ws.receive_json()
        ws.send_text("{not json")
        assert ws.receive_json()["error"]["code"] == "invalid_json"
        ws.send_bytes(b"\x00\x01")
        assert ws.receive_json()["error"]["code"] == "invalid_json"
        ws.send_json(["a list"])
        assert ws.receive_json()["error"]["param"] == "type"


def test_auth_by_subprotocol_never_echoes_the_key(client):
    with client.websocket_connect(ROUTE, subprotocols=["realtime", f"openai-insecure-api-key.{API_KEY}", "openai-beta.realtime-v1"]) as ws:
        assert ws.accepted_subprotocol == "realtime"
        assert ws.receive_json()["type"] == "transcription_session.created"  # the beta subprotocol


@pytest.mark.parametrize("kwargs", [
    {"headers": {}},
    {"headers": {"Authorization": "Bearer wrong"}},
    {"headers": {}, "subprotocols": ["realtime", "openai-insecure-api-key.wrong"]},
])
def test_a_wrong_or_missing_key_gets_an_error_event_then_a_policy_close(client, kwargs):
    with connect(client, **kwargs) as ws:
        error = ws.receive_json()
        assert error["type"] == "error"
        assert error["error"]["code"] == "invalid_api_key"
        assert API_KEY not in json.dumps(error)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008


def test_sessions_beyond_the_limit_are_refused_with_a_reason(client):
    with connect(client) as first, connect(client) as second:
        first.receive_json()
        second.receive_json()
        with connect(client) as third:
            error = third.receive_json()
            assert error["error"]["code"] == "session_limit_reached"
            with pytest.raises(WebSocketDisconnect) as closed:
                third.receive_json()
            assert closed.value.code == 1013
    with connect(client) as again:  # the closed sessions freed their places
        assert again.receive_json()["type"] == "session.created"


def test_an_idle_session_is_closed_with_a_reason(handler):
    app = create_app(ServerSettings(_env_file=None, realtime_idle_timeout_s=0.5), lambda: handler, load_in_background=False)
    with TestClient(app) as test_client:
        with test_client.websocket_connect(ROUTE) as ws:
            ws.receive_json()
            error = ws.receive_json()
            assert error["error"]["code"] == "session_idle_timeout"
            with pytest.raises(WebSocketDisconnect):
                ws.receive_json()
        assert app.state.server.live_sessions == 0


class SlowHandler:
    """The real handler, each decoding started ``delay_s`` late (a busy engine)."""

    def __init__(self, handler: Any, delay_s: float):
        self._handler, self._delay_s = handler, delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)

    def transcribe_batch(self, requests: list) -> list:
        time.sleep(self._delay_s)
        return self._handler.transcribe_batch(requests)

    def transcribe(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._delay_s)
        return self._handler.transcribe(*args, **kwargs)


def test_a_session_waiting_for_its_text_is_not_idle(handler):
    """The client has sent its audio and waits: the idle timeout must not close the session (and
    drop the turn) while the turn is still being decoded; once answered, the session idles out."""
    slow = SlowHandler(handler, delay_s=2.0)
    app = create_app(ServerSettings(_env_file=None, realtime_idle_timeout_s=0.5, realtime_partial_interval_s=0), lambda: slow, load_in_background=False)
    with TestClient(app) as test_client, test_client.websocket_connect(ROUTE) as ws:
        ws.receive_json()
        send_and_commit(ws, JFK)
        seen: list[dict] = []
        done = until(ws, "conversation.item.input_audio_transcription.completed", seen)
        assert wer(JFK["text"], done["transcript"]) <= 0.1
        error = ws.receive_json()
        assert error["type"] == "error" and error["error"]["code"] == "session_idle_timeout"


def test_with_partial_text_on_the_deltas_still_add_up_to_the_final_text(handler):
    app = create_app(ServerSettings(_env_file=None, realtime_partial_interval_s=0.5), lambda: handler, load_in_background=False)
    with TestClient(app) as test_client, test_client.websocket_connect(ROUTE) as ws:
        ws.receive_json()
        send_and_commit(ws, JFK)
        seen: list[dict] = []
        completed = until(ws, "conversation.item.input_audio_transcription.completed", seen)
    deltas = "".join(e["delta"] for e in seen if e["type"].endswith(".delta"))
    assert completed["transcript"].startswith(deltas) and deltas  # never a word the final text takes back
    assert wer(JFK["text"], completed["transcript"]) <= 0.1


def test_session_speakers_keep_their_labels_across_turns():
    rng = np.random.default_rng(0)
    voices = [v / np.linalg.norm(v) for v in rng.normal(size=(2, 192))]
    near = lambda v: (v + 0.3 * rng.normal(size=192) / np.sqrt(192)) / np.linalg.norm(v + 0.3 * rng.normal(size=192) / np.sqrt(192))  # noqa: E731
    speakers = SessionSpeakers(threshold=0.46)
    first = speakers.assign({"a": (near(voices[0]), 3.0)})["a"]
    both = speakers.assign({"x": (near(voices[1]), 3.0), "y": (near(voices[0]), 3.0)})
    assert both["y"] == first and both["x"] != first
    # A first voice heard only briefly is provisional: the next unmatched voice takes it over.
    short = SessionSpeakers(threshold=0.46)
    label = short.assign({"s": (near(voices[0]), 0.4)})["s"]
    assert short.assign({"y": (near(voices[0]), 3.0), "x": (near(voices[1]), 3.0)})["y"] == label


def test_a_turn_whose_speakers_cannot_be_named_fails_alone(diarizing_handler, monkeypatch):
    """A fault after decoding (naming the turn's speakers) once killed the session's turn worker
    silently: later turns waited forever, the socket stopped being read and its pings went
    unanswered. The turn is answered ``failed`` with the reason; the next turn is transcribed."""
    from server.routers.realtime import LiveSession

    original, calls = LiveSession._session_segments, []

    def first_fails(self: Any, *args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("no speaker embedding for this turn")
        return original(self, *args)

    monkeypatch.setattr(LiveSession, "_session_segments", first_fails)
    app = create_app(ServerSettings(_env_file=None, realtime_partial_interval_s=0), lambda: diarizing_handler, load_in_background=False)
    with TestClient(app) as test_client, test_client.websocket_connect(ROUTE) as ws:
        ws.receive_json()
        send_and_commit(ws, JFK)
        failed = until(ws, "conversation.item.input_audio_transcription.failed")
        for append in appends(JFK):
            ws.send_json(append)
        ws.send_json({"type": "input_audio_buffer.commit"})
        done = until(ws, "conversation.item.input_audio_transcription.completed")
    assert failed["error"]["code"] == "inference_error" and "no speaker embedding for this turn" in failed["error"]["message"]
    assert wer(JFK["text"], done["transcript"]) <= 0.1 and done["item_id"] != failed["item_id"]


def test_the_two_speaker_call_gets_two_consistent_speakers(diarizing_handler):
    app = create_app(ServerSettings(_env_file=None, realtime_partial_interval_s=0), lambda: diarizing_handler, load_in_background=False)
    with TestClient(app) as test_client, test_client.websocket_connect(ROUTE) as ws:
        ws.receive_json()
        for event in appends(CALL, tail_s=1.0):
            ws.send_json(event)
        seen: list[dict] = []
        while not any(e["type"].endswith(".completed") and e["audio_end_ms"] >= 29000 for e in seen):
            seen.append(ws.receive_json())
            assert seen[-1]["type"] != "error", seen[-1]
    segments = [e for e in seen if e["type"].endswith(".segment")]
    text = " ".join(e["transcript"] for e in seen if e["type"].endswith(".completed"))
    assert wer(CALL["text"], text) <= 0.35
    # Each reference utterance's speaker, against the live segment that holds its start.
    pairs = []
    for utterance in CALL["segments"]:
        holding = [s for s in segments if s["start"] - 0.3 <= utterance["start"] < s["end"]]
        if holding:
            pairs.append((utterance["speaker"], holding[0]["speaker"]))
    assert len(pairs) >= 0.8 * len(CALL["segments"])
    labels = {person: max({live for p, live in pairs if p == person}, key=[live for p, live in pairs if p == person].count) for person in ("Diane", "Sheila")}
    assert labels["Diane"] != labels["Sheila"]
    agreeing = sum(labels[person] == live for person, live in pairs)
    assert agreeing >= 0.8 * len(pairs), pairs


# --- against a live server: the openai SDK's realtime client and a browser-style client -----------


@pytest.fixture(scope="module")
def live(start_server):
    return start_server({"API_KEY": API_KEY, "TORCH_THREADS": "1"})


def test_openai_sdk_realtime_client_transcribes_jfk(live):
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=API_KEY)
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        created = connection.recv()
        assert created.type == "session.created"
        connection.send({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}}}})
        for event in appends(JFK, tail_s=1.0):
            connection.send(event)
        texts: list[str] = []
        for event in connection:
            assert event.type != "error", event
            if event.type == "conversation.item.input_audio_transcription.completed":
                texts.append(event.transcript)
                if sum(len(t.split()) for t in texts) >= 20:
                    break
    assert wer(JFK["text"], " ".join(texts)) <= 0.1, texts


def test_browser_style_client_authenticates_by_subprotocol(live):
    from websockets.sync.client import connect as ws_connect

    url = realtime_url(live.url)
    with ws_connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{API_KEY}", "openai-beta.realtime-v1"]) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv())["type"] == "transcription_session.created"
        ws.send(json.dumps(MANUAL))
        for event in appends(JFK):
            ws.send(json.dumps(event))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while True:
            message = json.loads(ws.recv(timeout=120))
            assert message["type"] != "error", message
            if message["type"] == "conversation.item.input_audio_transcription.completed":
                break
    assert wer(JFK["text"], message["transcript"]) <= 0.1
