"""Enrolled and known speakers through the server: in-process (httpx's ``ASGITransport`` and the
official ``openai`` SDK) on the real diarizing handler, then a live Uvicorn server restarted on the
same ``VOICEPRINTS_DB`` (voiceprints survive the restart)."""

from __future__ import annotations

import base64
import contextlib
import io
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import numpy as np
import openai
import pytest
import soundfile
import soxr
from conftest import DIARIZATION_MODEL, TINY_EN_MODEL
from openai.types.audio import TranscriptionDiarized
from speaker_clips import RATE, data_url, two_speaker_call, wav_bytes

from config import ServerSettings
from diarization.voiceprints import VoiceprintStore
from server import create_app

API_KEY = "speakers-key-41f2"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SILENCE = np.zeros(RATE * 3, np.float32)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def clips() -> tuple[bytes, dict[str, np.ndarray]]:
    return two_speaker_call()


@pytest.fixture
def store(diarizing_handler: Any, tmp_path: Path) -> Iterator[Path]:
    """The session's diarizing handler on an empty voiceprint file of this test's own."""
    path = tmp_path / "voiceprints.sqlite3"
    saved = diarizing_handler.voiceprints
    diarizing_handler.voiceprints = VoiceprintStore(path)
    try:
        yield path
    finally:
        diarizing_handler.voiceprints = saved


@contextlib.asynccontextmanager
async def serving(handler: Any) -> AsyncIterator[tuple[httpx.AsyncClient, openai.AsyncOpenAI]]:
    """The app on ``handler`` behind an API key: a raw httpx client (no key) and the openai SDK (with it)."""
    app = create_app(ServerSettings(_env_file=None, api_key=API_KEY), lambda: handler, load_in_background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=300) as client, httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://test", timeout=300
        ) as http:
            yield client, openai.AsyncOpenAI(base_url="http://test/v1", api_key=API_KEY, http_client=http, max_retries=0)


def enroll_files(name: str, samples: np.ndarray) -> dict[str, Any]:
    return {"files": {"file": (f"{name}.wav", wav_bytes(samples))}, "data": {"name": name}}


def speakers_of(result: TranscriptionDiarized) -> set[str]:
    return {segment.speaker for segment in result.segments}


@pytest.mark.anyio
async def test_enroll_list_name_and_delete_through_the_api(diarizing_handler, store, clips):
    audio, references = clips
    async with serving(diarizing_handler) as (client, sdk):
        assert (await client.post("/v1/speakers", **enroll_files("Diane", references["Diane"]))).status_code == 401
        assert (await client.get("/v1/speakers")).status_code == 401
        for name in ("Diane", "Sheila"):
            enrolled = await client.post("/v1/speakers", headers=AUTH, **enroll_files(name, references[name]))
            assert enrolled.status_code == 201, enrolled.text
            assert enrolled.json()["name"] == name and enrolled.json()["model_id"] == diarizing_handler.embedder.model_id
        listed = (await client.get("/v1/speakers", headers=AUTH)).json()
        assert [s["name"] for s in listed["data"]] == ["Diane", "Sheila"] and "embedding" not in listed["data"][0]

        # OpenAI's known_speaker_names[] without references: the enrolled voiceprints name the speakers.
        result = await sdk.audio.transcriptions.create(model="whisper-1", file=("call.wav", audio), response_format="verbose_json", timestamp_granularities=["word"],
                                                       known_speaker_names=["Sheila", "Diane"], extra_body={"num_speakers": 2})
        assert result.speakers == ["Diane", "Sheila"]
        sheila = " ".join(w.word for w in result.words if w.speaker == "Sheila").lower()
        assert "chicago" in sheila and "texas" in sheila, sheila

        deleted = await client.delete("/v1/speakers/Sheila", headers=AUTH)
        assert deleted.status_code == 200 and deleted.json() == {"name": "Sheila", "object": "speaker", "deleted": True}
        again = await client.delete("/v1/speakers/Sheila", headers=AUTH)
        assert again.status_code == 404 and again.json()["error_type"] == "speaker_not_found"
        assert [s["name"] for s in (await client.get("/v1/speakers", headers=AUTH)).json()["data"]] == ["Diane"]
        with pytest.raises(openai.NotFoundError) as raised:
            await sdk.audio.transcriptions.create(model="whisper-1", file=("call.wav", audio), response_format="diarized_json", known_speaker_names=["Sheila"])
        assert "'Sheila'" in raised.value.message and "enroll" in raised.value.message


@pytest.mark.anyio
async def test_openai_references_as_data_urls_name_both_and_leave_an_absent_voice_out(diarizing_handler, store, clips):
    audio, references = clips
    # Sheila's reference as a 48 kHz stereo WAV: 1.5 MB of data URL, over Starlette's default 1 MB per form field.
    sheila_48k = soxr.resample(references["Sheila"], RATE, 48000)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([sheila_48k, sheila_48k], axis=1), 48000, format="WAV", subtype="PCM_16")
    urls = [data_url(references["Diane"]), "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode(), data_url(references["Absent"])]
    assert len(urls[1]) > 1024 * 1024
    async with serving(diarizing_handler) as (_, sdk):
        result = await sdk.audio.transcriptions.create(
            model="whisper-1", file=("call.wav", audio), response_format="verbose_json", timestamp_granularities=["word"],
            known_speaker_names=["Diane", "Sheila", "Absent"], known_speaker_references=urls, extra_body={"num_speakers": 2},
        )
    assert result.speakers == ["Diane", "Sheila"] and {w.speaker for w in result.words} == {"Diane", "Sheila"}
    diane = " ".join(w.word for w in result.words if w.speaker == "Diane").lower()
    assert "new jersey now" in diane, diane
    # The similarity per name comes back as an extra field the SDK keeps; the absent voice names nobody.
    matches = {m["name"]: m for m in result.speaker_matches}
    assert matches["Absent"]["cluster"] is None and matches["Diane"]["cluster"] != matches["Sheila"]["cluster"]
    assert min(matches["Diane"]["similarity"], matches["Sheila"]["similarity"]) > matches["Absent"]["similarity"]


def mismatched_store(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE voiceprints SET model_id = 'OtherModel-192-0000'")


@pytest.mark.anyio
async def test_every_bad_reference_is_a_clear_4xx(diarizing_handler, store, clips):
    audio, references = clips
    diane = data_url(references["Diane"])

    def known(names: list[str], refs: list[str] | None = None) -> dict[str, Any]:
        data = {"known_speaker_names[]": names, "response_format": "diarized_json"}
        if refs is not None:
            data["known_speaker_references[]"] = refs
        return {"files": {"file": ("call.wav", audio)}, "data": data, "headers": AUTH}

    cases = {  # what is sent: (status, error type, words the message must hold)
        "too short": (known(["bob"], [data_url(references["Diane"][: RATE])]), 422, "invalid_speaker_reference", "1.0 s long"),
        "silent": (known(["bob"], [data_url(SILENCE)]), 422, "invalid_speaker_reference", "0.0 s of speech"),
        "not audio": (known(["bob"], ["data:audio/wav;base64," + "QUJD" * 200]), 422, "invalid_speaker_reference", "reference audio for 'bob'"),
        "more than 8": (known([f"p{i}" for i in range(9)], [diane] * 9), 422, "invalid_parameters", "at most 8"),
        "names without as many references": (known(["Diane", "Sheila"], [diane]), 422, "invalid_parameters", "one reference per name"),
        "unknown enrolled name": (known(["Nobody"]), 404, "speaker_not_found", "'Nobody'"),
    }
    async with serving(diarizing_handler) as (client, _):
        for case, (request, status, kind, words) in cases.items():
            answer = await client.post("/v1/audio/transcriptions", **request)
            assert answer.status_code == status and answer.json()["error"]["type"] == kind and words in answer.json()["error"]["message"], (case, answer.text)

        # Enrolment (the HF runtime's error shape, as every route outside /audio/): the same checks, plus the form itself.
        bad_enrolments = {
            "silent": (enroll_files("Bob", SILENCE), 422, "0.0 s of speech"),
            "label-like name": (enroll_files("SPEAKER_00", references["Diane"]), 422, "unidentified speaker"),
            "no name": ({"files": {"file": ("a.wav", wav_bytes(references["Diane"]))}}, 422, "name"),
            "no file": ({"data": {"name": "Bob"}, "files": {"other": ("a.txt", b"x")}}, 400, "'file'"),
            "JSON body": ({"json": {"name": "Bob"}}, 415, "multipart/form-data"),
        }
        for case, (request, status, words) in bad_enrolments.items():
            answer = await client.post("/v1/speakers", headers=AUTH, **request)
            assert answer.status_code == status and words in answer.json()["error"], (case, answer.text)
        assert (await client.get("/v1/speakers", headers=AUTH)).json()["data"] == []

        # A voiceprint made by another embedding model is refused (409), never compared.
        assert (await client.post("/v1/speakers", headers=AUTH, **enroll_files("Diane", references["Diane"]))).status_code == 201
        mismatched_store(store)
        answer = await client.post("/v1/audio/transcriptions", **known(["Diane"]))
        assert answer.status_code == 409 and answer.json()["error"]["type"] == "voiceprint_model_mismatch" and "enroll them again" in answer.json()["error"]["message"]


@pytest.mark.anyio
async def test_known_speakers_without_a_diarization_model_is_a_clear_422(handler, clips):
    audio, references = clips
    async with serving(handler) as (client, _):
        named = await client.post("/v1/audio/transcriptions", headers=AUTH, files={"file": ("call.wav", audio)},
                                  data={"known_speaker_names[]": ["Diane"], "known_speaker_references[]": [data_url(references["Diane"])]})
        enrolled = await client.post("/v1/speakers", headers=AUTH, **enroll_files("Diane", references["Diane"]))
    assert named.status_code == 422 and named.json()["error"]["type"] == "model_not_configured" and "DIARIZATION_MODEL" in named.json()["error"]["message"], named.text
    assert enrolled.status_code == 422 and enrolled.json()["error_type"] == "model_not_configured" and "DIARIZATION_MODEL" in enrolled.json()["error"], enrolled.text


def test_voiceprints_survive_a_live_server_restart(start_server, tmp_path, clips):
    audio, references = clips
    env = {"ASR_MODEL": str(TINY_EN_MODEL), "DIARIZATION_MODEL": str(DIARIZATION_MODEL), "VOICEPRINTS_DB": str(tmp_path / "voiceprints.sqlite3"), "API_KEY": API_KEY, "TORCH_THREADS": "1"}
    first = start_server(env)
    for name in ("Diane", "Sheila"):
        answer = httpx.post(f"{first.url}/v1/speakers", headers=AUTH, timeout=120, **enroll_files(name, references[name]))
        assert answer.status_code == 201, answer.text
    first.stop()

    second = start_server(env)
    listed = httpx.get(f"{second.url}/v1/speakers", headers=AUTH, timeout=30).json()
    assert [s["name"] for s in listed["data"]] == ["Diane", "Sheila"]
    sdk = openai.OpenAI(base_url=f"{second.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    result = sdk.audio.transcriptions.create(model="whisper-1", file=("call.wav", audio), response_format="diarized_json", known_speaker_names=["Diane", "Sheila"], extra_body={"num_speakers": 2})
    # diarized_json's segments are the speaker turns: both people's names, no SPEAKER_xx left.
    assert isinstance(result, TranscriptionDiarized) and speakers_of(result) == {"Diane", "Sheila"}
    sheila = " ".join(s.text for s in result.segments if s.speaker == "Sheila").lower()
    assert "chicago" in sheila, sheila
    assert {m["name"] for m in result.speaker_matches if m["cluster"] is not None} == {"Diane", "Sheila"}
    assert httpx.delete(f"{second.url}/v1/speakers/Diane", headers=AUTH, timeout=30).status_code == 200
    assert [s["name"] for s in httpx.get(f"{second.url}/v1/speakers", headers=AUTH, timeout=30).json()["data"]] == ["Sheila"]
