"""bench.stability: the perturbations keep the speech, the bootstrap measures what it says, and a real
model's WER stays put under them on clean speech."""

from __future__ import annotations

import numpy as np
import pytest

from bench.stability import PERTURBATIONS, measure, paired_bootstrap, summarize
from eval_client.metrics import EditCounts


@pytest.fixture(scope="module")
def speech(jfk_flac) -> np.ndarray:
    from audio import load_audio

    return load_audio(jfk_flac, 16000, 1e9).samples  # decoded as bench.load_set decodes


def test_perturbations_are_small_and_keep_the_clip(speech):
    power = np.mean(speech.astype(np.float64) ** 2)
    for name, perturb in PERTURBATIONS.items():
        out = perturb(speech, 3)
        assert out.dtype == np.float32 and np.isfinite(out).all() and np.abs(out).max() <= 1.0, name
        assert 0 <= len(out) - len(speech) <= 400, name  # at most 25 ms of leading silence
        if name.startswith("noise"):
            snr = 10 * np.log10(power / np.mean((out.astype(np.float64) - speech) ** 2))
            assert abs(snr - float(name[5:7])) < 0.5, (name, snr)
    noisy = PERTURBATIONS["noise50dB-seed1"]
    assert np.array_equal(noisy(speech, 0), noisy(speech, 0)) and not np.array_equal(noisy(speech, 0), noisy(speech, 1))


def counts(errors: int, words: int = 10) -> EditCounts:
    return EditCounts(hits=words - errors, substitutions=errors)


def test_paired_bootstrap():
    same = [counts(e) for e in (0, 1, 2, 3)]
    assert paired_bootstrap(same, same) == {"difference": 0.0, "ci95": [0.0, 0.0]}
    worse = [counts(e + 1) for e in (0, 1, 2, 3)]  # one more error on every item
    result = paired_bootstrap(same, worse)
    assert result["difference"] == 0.1 and result["ci95"] == [0.1, 0.1]
    mixed = [counts(e) for e in (3, 0, 2, 1)]  # the same errors, on other items
    result = paired_bootstrap(same, mixed)
    assert result["difference"] == 0.0 and result["ci95"][0] < 0 < result["ci95"][1]


def test_a_real_model_on_clean_speech_is_stable(speech):
    """Whisper base (CTranslate2) on JFK: every variant transcribed near perfectly, and the summary
    compares a system with itself as no difference."""
    rows = [{"id": "jfk", "samples": speech, "text": "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."}]
    results = measure(["ours-ct2-int8"], rows, ["none", "gain0.8", "noise50dB-seed1", "lead25ms"])
    wers = results["ours-ct2-int8"]
    assert all(v["wer"] <= 0.05 for v in wers.values()), {k: v["wer"] for k, v in wers.items()}
    summary = summarize({"a": wers, "b": wers})
    assert summary["comparison"]["mean"] == 0.0 and summary["comparison"]["paired_bootstrap"]["ci95"] == [0.0, 0.0]
    assert summary["systems"]["a"]["range"][0] <= summary["systems"]["a"]["mean"] <= summary["systems"]["a"]["range"][1]
