"""bench.stage_profile finds each stage's CPU seconds on real runs: our engine (which decodes on a thread
of its own) and faster-whisper's batched pipeline (which decodes on the caller's thread)."""

from __future__ import annotations

import pytest

from audio import load_audio
from bench.stage_profile import profile_system


@pytest.mark.parametrize("system", ["ours-ct2-int8", "fw-int8-batched8"])
def test_stages_are_found_on_a_real_transcription(system, jfk_flac):
    row = {"samples": load_audio(jfk_flac).samples}
    stages = profile_system(system, {"jfk": [row]})["jfk"]
    # A stage that matched no function would read 0: the model's encode and generate must be seen.
    assert stages["encoder"] > 0 and stages["decoder"] > 0 and stages["vad"] > 0
    assert stages["encoder"] + stages["decoder"] <= stages["total"]
    assert stages["audio_s"] == pytest.approx(11.0, abs=0.1)
