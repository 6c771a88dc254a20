"""Known speakers (speaker identification), enrolled voiceprints and overlap flags, on the real
offline pipeline and the real 2-speaker call."""

from __future__ import annotations

import base64
import sqlite3

import numpy as np
import pytest
from speaker_clips import RATE, cut, item_samples, two_speaker_call, wav_b64

from config import InferenceConfig
from diarization.speaker_identification import match_speakers
from diarization.voiceprints import Voiceprint, VoiceprintStore
from diarization_utils import mark_overlaps
from errors import InvalidParameters, InvalidSpeakerReference, ModelNotConfigured, SpeakerNotFound, VoiceprintMismatch
from schemas import SpeakerSegment, SpeakerTurn


@pytest.fixture(scope="module")
def call():
    """(the call minus the reference spans, as wav bytes; {name: base64 reference})."""
    audio, references = two_speaker_call()
    return audio, {name: wav_b64(samples) for name, samples in references.items()}


# --- matching (no model) ------------------------------------------------------------------------------


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def test_hungarian_assignment_gives_one_name_per_cluster_and_leaves_the_rest():
    centroids = {"SPEAKER_00": np.array([1.0, 0.1, 0.0]), "SPEAKER_01": np.array([0.0, 1.0, 0.0]), "SPEAKER_02": np.array([0.0, 0.0, 1.0])}
    # "a" is closest to SPEAKER_00 but so is "b", more weakly; the assignment maximises the total,
    # so "b" takes SPEAKER_01 only if it clears the threshold; "c" resembles nobody.
    prints = [Voiceprint("a", unit([1, 0, 0]), "m"), Voiceprint("b", unit([0.8, 0.6, 0]), "m"), Voiceprint("c", unit([-1, -1, 0]), "m")]
    matches = {m.name: m for m in match_speakers(centroids, prints, threshold=0.5)}
    assert matches["a"].cluster == "SPEAKER_00" and matches["a"].similarity == pytest.approx(1 / np.linalg.norm([1, 0.1, 0]), abs=1e-4)
    assert matches["b"].cluster == "SPEAKER_01" and matches["b"].similarity == pytest.approx(0.6, abs=1e-4)
    assert matches["c"].cluster is None and matches["c"].similarity < 0.5
    assert match_speakers({}, prints, 0.5)[0].cluster is None


def test_overlap_flags_mark_turns_containing_overlapped_speech():
    segments = [SpeakerSegment(speaker="A", start=0, end=5), SpeakerSegment(speaker="B", start=4.5, end=8), SpeakerSegment(speaker="A", start=9, end=10)]
    turns = [SpeakerTurn(speaker="A", text="x", timestamp=(0.2, 4.8)), SpeakerTurn(speaker="B", text="y", timestamp=(4.98, 7.9)), SpeakerTurn(speaker="A", text="z", timestamp=(9.1, 9.9))]
    mark_overlaps(turns, segments)
    # B's turn only touches the overlap (0.02 s): a hand-over, not overlapped speech.
    assert [t.overlap for t in turns] == [True, False, False]


@pytest.mark.parametrize(
    "known, message",
    [
        ({f"p{i}": "x" for i in range(9)}, "at most 8"),
        (["a", "a"], "named twice"),
        (["SPEAKER_01"], "unidentified speaker"),
        ({" bob": "x"}, "leading or trailing"),
        ({"bob": ""}, "no reference audio"),
    ],
)
def test_bad_known_speaker_names_are_refused(known, message):
    with pytest.raises(InvalidParameters, match=message):
        InferenceConfig.parse({"known_speakers": known})


def test_known_speakers_with_diarization_off_is_refused():
    with pytest.raises(InvalidParameters, match="diarize is false"):
        InferenceConfig.parse({"known_speakers": ["bob"], "diarize": False})


def test_known_speakers_without_a_diarization_model_is_refused(handler, call):
    with pytest.raises(ModelNotConfigured, match="known_speakers need a diarization model"):
        handler.transcribe(call[0], InferenceConfig.parse({"known_speakers": {"Diane": call[1]["Diane"]}}))


# --- references on the real pipeline ------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference, message",
    [
        (base64.b64encode(b"this is not audio at all" * 20).decode(), "reference audio for 'bob'.*"),
        ("not base64!", "reference audio for 'bob'.*base64"),
        (wav_b64(np.zeros(RATE * 3, np.float32)), r"holds 0\.0 s of speech"),
        ("short", None),  # 1 s of real speech
        ("long", None),  # 12 s of real speech
    ],
)
def test_bad_references_are_refused_before_anything_runs(diarizing_handler, call, reference, message):
    sample = item_samples("pyannote_sample")
    if reference == "short":
        reference, message = wav_b64(cut(sample, 11.5, 12.5)), r"is 1\.0 s long; it must be 2-10 s"
    elif reference == "long":
        reference, message = wav_b64(cut(sample, 10.0, 22.0)), r"is longer than 10 s; it must be 2-10 s"
    with pytest.raises(InvalidSpeakerReference, match=message):
        diarizing_handler.transcribe(call[0], InferenceConfig.parse({"known_speakers": {"bob": reference}}))
    assert InvalidSpeakerReference.status_code == 422


def test_references_name_both_speakers_and_leave_an_absent_voice_unassigned(diarizing_handler, call):
    audio, references = call
    response = diarizing_handler({"inputs": audio, "parameters": {"known_speakers": references, "timestamps": "word", "num_speakers": 2}})
    matches = {m["name"]: m for m in response["speaker_matches"]}
    assert matches["Diane"]["cluster"] and matches["Sheila"]["cluster"] and matches["Diane"]["cluster"] != matches["Sheila"]["cluster"]
    assert matches["Absent"]["cluster"] is None, matches
    assert min(matches["Diane"]["similarity"], matches["Sheila"]["similarity"]) > matches["Absent"]["similarity"]
    # The names label the transcript: each person's own words land in their turns.
    text = {name: " ".join(t["text"] for t in response["speakers"] if t["speaker"] == name).lower() for name in ("Diane", "Sheila")}
    assert "chicago" in text["Sheila"] and "texas" in text["Sheila"], text
    assert "new jersey now" in text["Diane"] and "know you were there" in text["Diane"], text
    assert {w["speaker"] for w in response["words"]} == {"Diane", "Sheila"}
    # Overlap flags: the call has overlapped speech (≈1.9 s) but most turns are clean.
    flags = [t["overlap"] for t in response["speakers"]]
    assert any(flags) and not all(flags)


def test_an_absent_voice_does_not_take_the_unnamed_speaker(diarizing_handler, call):
    audio, references = call
    response = diarizing_handler({"inputs": audio, "parameters": {"known_speakers": {"Diane": references["Diane"], "Absent": references["Absent"]}, "num_speakers": 2}})
    matches = {m["name"]: m["cluster"] for m in response["speaker_matches"]}
    assert matches["Diane"] is not None and matches["Absent"] is None
    assert {t["speaker"] for t in response["speakers"]} == {"Diane", "SPEAKER_00" if matches["Diane"] == "SPEAKER_01" else "SPEAKER_01"}


# --- enrolled voiceprints -----------------------------------------------------------------------------


def test_enrolled_speakers_are_named_listed_deleted_and_persist(diarizing_handler, call, tmp_path):
    audio, references = call
    store_path = tmp_path / "voiceprints.sqlite3"
    diarizing_handler.voiceprints = VoiceprintStore(store_path)
    try:
        assert diarizing_handler.list_speakers() == [] and not store_path.exists()
        for name in ("Diane", "Sheila"):
            enrolled = diarizing_handler.enroll_speaker(name, references[name])
            assert enrolled.model_id == diarizing_handler.embedder.model_id and enrolled.dimension == 192
        # A new store on the same file (as after a restart) sees them.
        diarizing_handler.voiceprints = VoiceprintStore(store_path)
        assert [s.name for s in diarizing_handler.list_speakers()] == ["Diane", "Sheila"]
        # (Naming a transcription's speakers from enrolled voiceprints: tests/test_speakers_api.py.)
        assert [v.name for v in diarizing_handler.known_voiceprints(InferenceConfig.parse({"known_speakers": ["Sheila", "Diane"]}))] == ["Sheila", "Diane"]

        with pytest.raises(SpeakerNotFound, match="'Bob'"):
            diarizing_handler.transcribe(audio, InferenceConfig.parse({"known_speakers": ["Diane", "Bob"]}))
        diarizing_handler.delete_speaker("Sheila")
        assert [s.name for s in diarizing_handler.list_speakers()] == ["Diane"]
        with pytest.raises(SpeakerNotFound):
            diarizing_handler.delete_speaker("Sheila")
        with pytest.raises(InvalidSpeakerReference):
            diarizing_handler.enroll_speaker("Bob", wav_b64(np.zeros(RATE * 3, np.float32)))
        with pytest.raises(InvalidParameters, match="unidentified"):
            diarizing_handler.enroll_speaker("SPEAKER_00", references["Diane"])

        # A voiceprint made by another embedding model is refused, never compared.
        with sqlite3.connect(store_path) as db:
            db.execute("UPDATE voiceprints SET model_id = 'OtherModel-192-0000' WHERE name = 'Diane'")
        with pytest.raises(VoiceprintMismatch, match="'Diane'.*OtherModel-192-0000.*enroll them again"):
            diarizing_handler.transcribe(audio, InferenceConfig.parse({"known_speakers": ["Diane"]}))
    finally:
        diarizing_handler.voiceprints = VoiceprintStore(diarizing_handler.base_dir / diarizing_handler.settings.voiceprints_db)
