"""The 2-speaker call cut for speaker-identification tests (shared by test_speaker_id.py and
test_speakers_api.py): references come from speech that is then removed from the audio that gets
diarized, so no reference is scored against itself.

The call is Diane and Sheila (pyannote_sample.stm): Diane alone 11.03-14.40 s ("I heard a beep.
This is Diane in New Jersey"), Sheila alone 22.00-27.80 s ("Well, there isn't that much difference.
At least…"). A third voice absent from the call: an AMI speaker (MEE009) from another dev recording."""

from __future__ import annotations

import base64
import io

import numpy as np
import soundfile
from conftest import manifest_rows

from audio import load_audio

RATE = 16000
DIANE_REFERENCE, SHEILA_REFERENCE = (11.03, 14.40), (22.00, 27.80)
SCORED_SPANS = [(0.0, 11.0), (14.45, 21.9), (27.85, 30.0)]
ABSENT_REFERENCE = ("pyannote_ami_debug_dev00", (1.5, 9.5))
DIARIZATION_ITEMS = {row["id"]: row for row in manifest_rows("diarization")}


def item_samples(item_id: str) -> np.ndarray:
    return load_audio(open(DIARIZATION_ITEMS[item_id]["audio"], "rb").read()).samples


def cut(samples: np.ndarray, start: float, end: float) -> np.ndarray:
    return samples[int(start * RATE) : int(end * RATE)]


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def wav_b64(samples: np.ndarray) -> str:
    return base64.b64encode(wav_bytes(samples)).decode()


def data_url(samples: np.ndarray) -> str:
    """A reference as OpenAI's ``known_speaker_references[]`` carries it."""
    return f"data:audio/wav;base64,{wav_b64(samples)}"


def two_speaker_call() -> tuple[bytes, dict[str, np.ndarray]]:
    """(the call minus the reference spans, as wav bytes; {name: reference samples})."""
    sample = item_samples("pyannote_sample")
    scored = np.concatenate([cut(sample, *span) for span in SCORED_SPANS])
    references = {
        "Diane": cut(sample, *DIANE_REFERENCE),
        "Sheila": cut(sample, *SHEILA_REFERENCE),
        "Absent": cut(item_samples(ABSENT_REFERENCE[0]), *ABSENT_REFERENCE[1]),
    }
    return wav_bytes(scored), references
