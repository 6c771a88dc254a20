"""The response renderers on a diarized TranscriptionResponse (no model in this process: a live
diarization pipeline is not available yet, so speaker labels are checked here, exactly)."""

from __future__ import annotations

import pytest

from config import InferenceConfig, Task
from schemas import Chunk, SpeakerTurn, TranscriptionResponse, Word
from server.render import clock, delta_event, diarized_json, ndjson, srt, sse, tt, verbose_json, vtt
from server.routers.openai import OpenAITranscriptionForm


@pytest.fixture
def diarized() -> TranscriptionResponse:
    return TranscriptionResponse(
        text="Hello there. Hi, how are you?",
        chunks=[Chunk(text="Hello there.", timestamp=(0.0, 1.5), speaker="SPEAKER_00"), Chunk(text="Hi, how are you?", timestamp=(1.75, 3661.0042), speaker="SPEAKER_01")],
        speakers=[SpeakerTurn(speaker="SPEAKER_00", text="Hello there.", timestamp=(0.0, 1.5)), SpeakerTurn(speaker="SPEAKER_01", text="Hi, how are you?", timestamp=(1.75, 3661.0042))],
        language="en",
        duration=3661.5,
        words=[Word(text="Hello", start=0.0, end=0.6, speaker="SPEAKER_00"), Word(text="there.", start=0.6, end=1.5, speaker="SPEAKER_00")],
        strategy="batched",
        num_speakers=2,
    )


def test_clock_rounds_to_milliseconds_and_carries_hours():
    assert clock(3661.0042, ",") == "01:01:01,004"
    assert clock(59.9996, ".") == "00:01:00.000"


def test_srt_and_vtt_cues_carry_speaker_labels(diarized):
    assert srt(diarized) == "1\n00:00:00,000 --> 00:00:01,500\n[SPEAKER_00] Hello there.\n\n2\n00:00:01,750 --> 01:01:01,004\n[SPEAKER_01] Hi, how are you?\n\n"
    assert vtt(diarized) == "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n[SPEAKER_00] Hello there.\n\n00:00:01.750 --> 01:01:01.004\n[SPEAKER_01] Hi, how are you?\n\n"


def test_verbose_json_segments_and_words_carry_speakers(diarized):
    body = verbose_json(diarized, InferenceConfig(temperature=0.2), ["word", "segment"])
    assert body["language"] == "english" and body["task"] == "transcribe" and body["duration"] == 3661.5
    assert [(s["id"], s["speaker"], s["start"], s["text"], s["temperature"]) for s in body["segments"]] == [(0, "SPEAKER_00", 0.0, "Hello there.", 0.2), (1, "SPEAKER_01", 1.75, "Hi, how are you?", 0.2)]
    assert body["words"][1] == {"word": "there.", "start": 0.6, "end": 1.5, "speaker": "SPEAKER_00"}
    assert body["speakers"] == ["SPEAKER_00", "SPEAKER_01"]


def test_verbose_json_with_word_granularity_only_leaves_segments_out(diarized):
    assert "segments" not in verbose_json(diarized, InferenceConfig(), ["word"])


def test_tt_shape_with_and_without_diarization(diarized):
    assert tt(diarized, diarized=False) == {"text": diarized.text, "duration": 3661.5, "language": "en"}
    body = tt(diarized, diarized=True)
    assert body["speaker_count"] == 2 and body["speakers"] == ["SPEAKER_00", "SPEAKER_01"]
    assert body["segments"][1] == {"id": 1, "speaker": "SPEAKER_01", "start_time": 1.75, "end_time": 3661.0042, "text": "Hi, how are you?"}


def test_openai_form_maps_to_inference_config():
    config = OpenAITranscriptionForm(language="French", prompt="", temperature=0.3, timestamp_granularities=["segment", "word"], num_speakers=2).inference_config(Task.translate)
    assert (config.task, config.language, config.prompt, config.temperature, config.timestamps.value, config.num_speakers) == (Task.translate, "fr", None, 0.3, "word", 2)
    assert OpenAITranscriptionForm().inference_config(Task.transcribe).timestamps.value == "segment"


def test_verbose_json_carries_segment_statistics_when_the_pipeline_computed_them(diarized):
    scored = diarized.model_copy(update={"chunks": [type("ScoredChunk", (), {**c.model_dump(), "avg_logprob": -0.2, "compression_ratio": 1.4, "no_speech_prob": 0.01, "temperature": 0.0})() for c in diarized.chunks]})
    segment = verbose_json(scored, InferenceConfig(temperature=0.2), [])["segments"][0]
    assert (segment["avg_logprob"], segment["compression_ratio"], segment["no_speech_prob"], segment["temperature"]) == (-0.2, 1.4, 0.01, 0.0)
    assert "avg_logprob" not in verbose_json(diarized, InferenceConfig(), [])["segments"][0]  # not computed: not sent


def test_diarized_json_is_openais_shape(diarized):
    body = diarized_json(diarized)
    assert body["task"] == "transcribe" and body["usage"] == {"type": "duration", "seconds": 3661.5}
    assert body["segments"][1] == {"type": "transcript.text.segment", "id": "seg_1", "start": 1.75, "end": 3661.0042, "speaker": "SPEAKER_01", "text": "Hi, how are you?"}


def test_stream_frames():
    assert sse(delta_event("Hi")) == b'data: {"type": "transcript.text.delta", "delta": "Hi"}\n\n'
    assert ndjson({"text": "é", "chunk_id": 0}) == '{"text": "é", "chunk_id": 0}\n'.encode()


def test_stream_deltas_add_up_to_the_final_text_whatever_the_pipeline_streamed(diarized):
    from server.routers.tt import NDJSONText

    def lines(framing: NDJSONText, runs: list[list[Chunk]]) -> list[dict]:
        import json

        out = b"".join(framing.segments(run) for run in runs) + framing.finish(diarized)
        return [json.loads(line) for line in out.decode().splitlines()]

    streamed = lines(NDJSONText(diarized=False), [diarized.chunks[:1], diarized.chunks[1:]])
    silent = lines(NDJSONText(diarized=False), [])  # a pipeline that streamed nothing: all text at the end
    for result in (streamed, silent):
        assert "".join(line["text"] for line in result[:-1]) == result[-1]["text"] == diarized.text
        assert [line["chunk_id"] for line in result] == list(range(len(result))) and result[-1]["final"] is True
    assert [line["text"] for line in streamed[:-1]] == ["Hello there.", " Hi, how are you?"]
