"""Cost bounded by speech, not by length: the speech gate, block-wise VAD, diarization over speech
only and in linked blocks, on real models and real audio (short files, small blocks)."""

from __future__ import annotations

import io
import re
import time

import jiwer
import numpy as np
import pytest
import soundfile
from conftest import DATA_DIR, manifest_rows

from audio import load_audio
from diarization import speech_detection
from diarization.blocks import Piece, _Linker, diarize_speech, embedding_inference, map_back, plan_blocks
from diarization.speech_detection import SpeechRegion, detect_speech
from errors import AudioDecodeError
from schemas import SpeakerSegment

CALL = {row["id"]: row for row in manifest_rows("diarization")}["pyannote_sample"]  # 30 s, 2 speakers


def wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def call() -> np.ndarray:
    return load_audio(open(CALL["audio"], "rb").read()).samples


# --- VAD ------------------------------------------------------------------------------------------------


def test_vad_skips_silence_and_finds_speech_after_it(call):
    padded = np.concatenate([np.zeros(16000 * 600, dtype=np.float32), call, np.zeros(16000 * 60, dtype=np.float32)])
    regions, alone = detect_speech(padded), detect_speech(call)
    assert regions and abs(regions[0].start - 600 - alone[0].start) < 0.5 and abs(regions[-1].end - 600 - alone[-1].end) < 0.5
    assert detect_speech(np.zeros(16000 * 600, dtype=np.float32)) == []


def test_vad_blocks_give_the_regions_of_one_pass(call, monkeypatch):
    whole = detect_speech(call)
    monkeypatch.setattr(speech_detection, "BLOCK", 16000 * 7)  # four block boundaries inside the call
    blocked = detect_speech(call)
    speech = lambda regions: sum(r.end - r.start for r in regions)  # noqa: E731
    assert abs(speech(blocked) - speech(whole)) < 1.5
    assert all(a.end <= b.start for a, b in zip(blocked, blocked[1:]))


# --- block planning and time mapping (pure logic) ------------------------------------------------------


def test_blocks_join_near_regions_and_split_long_ones():
    regions = [SpeechRegion(10, 20), SpeechRegion(21, 25), SpeechRegion(100, 130)]
    blocks = plan_blocks(regions, duration=200, block_s=20)
    assert blocks == [[Piece(10, 25, 0)], [Piece(100, 120, 0)], [Piece(120, 130, 0)]] or blocks == [
        [Piece(10, 25, 0), Piece(100, 105, 15)],
        [Piece(105, 125, 0)],
        [Piece(125, 130, 0)],
    ]
    assert all(sum(p.end - p.start for p in block) <= 20 + 1e-9 for block in blocks)
    assert sum(p.end - p.start for block in blocks for p in block) == pytest.approx(15 + 30)
    assert plan_blocks([], duration=200, block_s=20) == []


def test_turns_map_back_to_the_original_timeline():
    pieces = [Piece(10, 15, 0), Piece(100, 110, 5)]
    turns = [SpeakerSegment(speaker="A", start=1, end=7), SpeakerSegment(speaker="B", start=12, end=15)]
    assert [(t.speaker, t.start, t.end) for t in map_back(turns, pieces)] == [("A", 11, 15), ("A", 100, 102), ("B", 107, 110)]


# --- diarization over speech, in blocks -------------------------------------------------------------------


def test_no_speech_costs_no_pyannote_call(diarizing_handler, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("pyannote ran on silence")

    monkeypatch.setattr(diarizing_handler.diarizer, "diarize", fail)
    assert diarize_speech(diarizing_handler.diarizer, np.zeros(16000 * 60, dtype=np.float32), []) == []
    started = time.perf_counter()
    response = diarizing_handler({"inputs": wav(np.zeros(16000 * 1200, dtype=np.float32)), "parameters": {"diarize": True}})
    assert response["strategy"] == "no-speech" and response["speakers"] == [] and response["text"] == ""
    assert response["duration"] == 1200.0 and "asr" not in response["timings"]
    assert time.perf_counter() - started < 20  # 20 minutes of audio; the pyannote call alone used to take minutes


def test_speech_after_silence_diarized_in_linked_blocks(diarizing_handler, call):
    """Five minutes of silence, then the 30 s two-speaker call, diarized in 10 s blocks of speech
    whose speakers are linked across blocks: turns at their own time, two speakers, and a DER close
    to the one-pass diarization's (0.056 measured; 10 s blocks 0.114)."""
    import sys

    from pyannote.core import Annotation, Segment

    from conftest import REPO_DIR

    sys.path.insert(0, str(REPO_DIR / "scripts"))
    from tune_diarization import der, dev_items

    item = next(i for i in dev_items(DATA_DIR) if i.id == "pyannote_sample")
    padded = np.concatenate([np.zeros(16000 * 300, dtype=np.float32), call])
    turns = diarize_speech(diarizing_handler.diarizer, padded, detect_speech(padded), block_s=10.0)
    assert min(turn.start for turn in turns) >= 299
    assert len({t.speaker for t in turns}) == 2
    hypothesis = Annotation(uri=item.id)
    for turn in turns:
        hypothesis[Segment(turn.start - 300, turn.end - 300), len(hypothesis)] = turn.speaker
    assert der(item, hypothesis, collar=0.0)[0] < 0.2


def test_linked_speakers_are_merged_down_to_the_requested_count():
    """Four block speakers, two of them one voice each: with a cap of 2 the closest are merged and
    every turn carries one of two names, in order of first speech."""
    voices = {"a": np.array([1.0, 0.0, 0.0]), "b": np.array([0.0, 1.0, 0.0]), "a2": np.array([0.95, 0.05, 0.0]), "b2": np.array([0.1, 0.9, 0.4])}
    linker = _Linker(embed=lambda _: None, cap=2)
    for name, vector in voices.items():
        linker.centroids.append(vector / np.linalg.norm(vector))
        linker.weights.append(10.0)
        linker.turns.append(SpeakerSegment(speaker=str(len(linker.centroids) - 1), start=len(linker.turns) * 10.0, end=len(linker.turns) * 10.0 + 5))
    turns = linker.finish()
    assert [t.speaker for t in turns] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00", "SPEAKER_01"]


def test_one_hertz_wav_is_refused_at_once(handler):
    tiny = wav(np.zeros(14000, dtype=np.float32), rate=1)  # 28 KB that would be ~4 h at 16 kHz
    started = time.perf_counter()
    with pytest.raises(AudioDecodeError, match="sample rate 1 Hz"):
        handler({"inputs": tiny})
    assert time.perf_counter() - started < 1


def test_embedding_model_is_loaded_once(diarizing_handler):
    first = embedding_inference(diarizing_handler.diarizer)
    assert embedding_inference(diarizing_handler.diarizer) is first


# --- long audio transcribed in sections -------------------------------------------------------------------


def test_sections_cut_in_pauses_and_cover_the_audio():
    from handler import sections

    regions = [SpeechRegion(0, 8), SpeechRegion(9, 15), SpeechRegion(16, 33), SpeechRegion(40, 41)]
    assert sections(regions, 45, 20) == [(0, 15.5), (15.5, 35.5), (35.5, 45)]  # 16-33 runs past 35.5: cut at the length
    assert sections([], 45, 20) == [(0, 20), (20, 40), (40, 45)]  # no pause: cut at the length
    assert sections(regions, 12, 20) == [(0, 12)]


def test_long_audio_is_transcribed_section_by_section(handler, jfk_flac, monkeypatch):
    """JFK's 11 s cut into sections of at most 6 s at a pause: the same words as in one pass, in
    order, with timestamps on the file's timeline."""
    import handler as handler_module

    whole = handler({"inputs": jfk_flac, "parameters": {"language": "en", "num_beams": 1}})
    monkeypatch.setattr(handler_module, "SECTION_S", 6.0)
    monkeypatch.setattr(handler_module, "SPEECH_CHECK_MIN_S", 0.0)
    sectioned = handler({"inputs": jfk_flac, "parameters": {"num_beams": 1}})
    assert sectioned["language"] == "en"
    words = lambda text: re.sub(r"[^\w' ]", "", text.lower()).split()  # noqa: E731 (a cut may change punctuation)
    # The same words in order; a cut may change one (a section has less context): at most 1 in 10.
    assert len(words(sectioned["text"])) == len(words(whole["text"])) and jiwer.wer(" ".join(words(whole["text"])), " ".join(words(sectioned["text"]))) <= 0.1, (whole["text"], sectioned["text"])
    starts = [c["timestamp"][0] for c in sectioned["chunks"]]
    assert starts == sorted(starts) and sectioned["chunks"][-1]["timestamp"][1] > 8


def test_long_audio_is_diarized_after_its_transcription_in_small_batches(diarizing_handler, call, monkeypatch):
    """Sectioned audio runs ASR, then diarization (their working memory would add up side by side),
    and on CPU its sections decode at most CPU_SECTION_BATCH_SIZE windows at once; the result is
    still a two-speaker transcript."""
    import handler as handler_module

    monkeypatch.setattr(handler_module, "SECTION_S", 10.0)
    events: list[tuple[str, float]] = []
    transcribe_batch, diarize = diarizing_handler.transcriber.transcribe_batch, diarizing_handler.diarizer.diarize
    batch_sizes: list[int] = []

    def recording_transcribe(requests):
        batch_sizes.extend(request.config.batch_size for request in requests)
        results = transcribe_batch(requests)
        events.append(("asr done", time.perf_counter()))
        return results

    def recording_diarize(*args, **kwargs):
        events.append(("diarization started", time.perf_counter()))
        return diarize(*args, **kwargs)

    monkeypatch.setattr(diarizing_handler.transcriber, "transcribe_batch", recording_transcribe)
    monkeypatch.setattr(diarizing_handler.diarizer, "diarize", recording_diarize)
    response = diarizing_handler({"inputs": wav(call), "parameters": {"diarize": True, "batch_size": 24}})
    assert len(batch_sizes) >= 3 and set(batch_sizes) == {handler_module.CPU_SECTION_BATCH_SIZE}
    last_asr = max(t for name, t in events if name == "asr done")
    assert min(t for name, t in events if name == "diarization started") > last_asr
    assert response["num_speakers"] == 2 and len(response["text"].split()) > 40


# --- memory ----------------------------------------------------------------------------------------------


def test_long_audio_is_kept_as_16_bit_pcm():
    """Past PCM16_AFTER_S the 16 kHz audio is held as int16 (half the memory) and read back as
    float32 within one quantization step; shorter audio stays float32, exactly as decoded."""
    import audio

    tone = (0.5 * np.sin(np.arange(16000 * 60) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    short = load_audio(tone)
    assert short.samples.dtype == np.float32
    original = audio.PCM16_AFTER_S
    try:
        audio.PCM16_AFTER_S = 30.0
        long = load_audio(tone)
        # A stream that declares no duration starts as float32 and turns int16 once it is long.
        unknown = audio._Output(None)
        for piece in np.split(tone, 60):
            unknown.append(piece)
        grown = unknown.finish()
    finally:
        audio.PCM16_AFTER_S = original
    for samples in (long.samples, grown):
        assert samples.dtype == np.int16 and len(samples) == len(tone)
        assert np.abs(audio.as_float32(samples) - tone).max() <= 1 / 32768
    assert long.duration == short.duration == 60.0
    assert audio.as_float32(short.samples) is short.samples  # float32 audio is not copied


def test_released_memory_goes_back_to_the_os():
    """The heap a stage leaves behind (many mid-sized temporaries) is returned by
    ``release_freed_memory``: glibc alone keeps it, and RSS would pile up stage after stage."""
    import psutil

    from memory import release_freed_memory

    process = psutil.Process()
    release_freed_memory()
    before = process.memory_info().rss
    temporaries = [np.ones(8000) for _ in range(4000)]  # 64 KB each, below glibc's mmap threshold: 256 MB of heap
    pinned = np.ones(8000)  # allocated last: keeps the heap's top in use, so free() alone cannot shrink it
    del temporaries
    kept = process.memory_info().rss - before
    release_freed_memory()
    released = process.memory_info().rss - before
    assert kept > 200 * 2**20, kept  # what glibc keeps without a trim
    assert released < 50 * 2**20, released
    del pinned


def test_a_long_clip_is_embedded_block_by_block_like_a_whole_pass(diarizing_handler, call, monkeypatch):
    """CAM++ embeds a clip longer than its block (a speaker centroid) block by block, with context,
    so its memory does not grow with the clip, and gives each block's freed activations back before
    the next; the embedding is that of one pass over the clip."""
    import torch

    from diarization import embedding as campplus

    model = embedding_inference(diarizing_handler.diarizer).model
    clip = torch.from_numpy(np.concatenate([call, call, call])).reshape(1, 1, -1)  # 90 s
    assert clip.shape[-1] > model.BLOCK_SECONDS * 16000
    releases: list[bool] = []
    monkeypatch.setattr(campplus, "release_freed_memory", lambda collect_cycles=True: releases.append(collect_cycles))
    with torch.inference_mode():
        blocked = model(clip)[0]
    assert len(releases) >= 3 and not any(releases)  # after each 30 s block; no slow cycle collection
    with torch.inference_mode():
        whole = model.xvector.dense(model.xvector.stats(model.frame_features(clip)))[0]
    assert torch.nn.functional.cosine_similarity(blocked, whole, dim=0) > 0.98
