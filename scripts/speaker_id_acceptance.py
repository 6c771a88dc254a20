"""Known-speaker acceptance on the held-out 2-speaker call (never used by the calibration).

The call is cut as the tests cut it (``tests/speaker_clips.py``): Diane's and Sheila's references are
taken from speech that is then removed from the audio that gets diarized. The remainder is diarized
as the handler diarizes it (speech only, blocks linked; ``num_speakers=2`` and the automatic count),
each final speaker embedded from their own speech, and names given by the handler's own matching
(``diarization.speaker_identification.match_speakers`` at the configured threshold). A name is correct when its speaker is
the one the reference RTTM puts most of that person's scored speech on (pyannote's optimal mapping).

Absent voices: every speaker of every other dev diarization item with a reference (AMI excerpts,
the LibriSpeech stereo clip), 2-10 s of their non-overlapped speech, each added as a third known
speaker beside Diane and Sheila; it must be left unassigned and must not displace either name.

    python scripts/speaker_id_acceptance.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))
sys.path.insert(0, str(REPO_DIR / "scripts"))
sys.path.insert(0, str(REPO_DIR / "tests"))  # speaker_clips: the one place the call's cut is defined

from calibrate_speaker_id import exclusive_clip  # noqa: E402
from pyannote.core import Annotation, Segment  # noqa: E402
from pyannote.metrics.diarization import DiarizationErrorRate  # noqa: E402
from speaker_clips import DIANE_REFERENCE, RATE, SCORED_SPANS, SHEILA_REFERENCE, two_speaker_call  # noqa: E402
from bench.data import data_dir  # noqa: E402
from tune_diarization import DEFAULT_PIPELINE, dev_items  # noqa: E402

from audio import load_audio  # noqa: E402
from config import ModelSettings  # noqa: E402
from diarization.blocks import diarize_speech, embedding_inference  # noqa: E402
from diarization.speaker_identification import SpeakerEmbedder, match_speakers  # noqa: E402
from diarization.speech_detection import detect_speech  # noqa: E402
from diarization_utils import Diarizer  # noqa: E402
from errors import InvalidSpeakerReference  # noqa: E402

CALL = "pyannote_sample"


def scored_reference(reference: Annotation) -> Annotation:
    """The call's reference annotation on the cut timeline (the scored spans joined end to end)."""
    shifted, offset = Annotation(uri=CALL), 0.0
    for start, end in SCORED_SPANS:
        for segment, track, label in reference.crop(Segment(start, end)).itertracks(yield_label=True):
            shifted[Segment(segment.start - start + offset, segment.end - start + offset), track] = label
        offset += end - start
    return shifted


def person_label(reference: Annotation, span: tuple[float, float]) -> str:
    """The RTTM label speaking most within a reference span."""
    return reference.crop(Segment(*span)).argmax()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=data_dir())
    parser.add_argument("--pipeline", default=str(DEFAULT_PIPELINE))
    args = parser.parse_args()

    settings = ModelSettings(_env_file=None, diarization_model=args.pipeline, device="cpu")
    threshold = settings.speaker_match_threshold
    diarizer = Diarizer.load(settings, REPO_DIR)
    embedder = SpeakerEmbedder(embedding_inference(diarizer))
    items = {item.id: item for item in dev_items(args.data_dir)}
    call_reference = items[CALL].reference
    labels = {"Diane": person_label(call_reference, DIANE_REFERENCE), "Sheila": person_label(call_reference, SHEILA_REFERENCE)}

    audio, clips = two_speaker_call()
    samples = load_audio(audio).samples
    known = [embedder.reference(name, clips[name]) for name in ("Diane", "Sheila")]
    absent = []
    for item in items.values():
        if item.id == CALL:
            continue
        for person in item.reference.labels():
            clip = exclusive_clip(item.reference, person, item.samples[0].numpy())
            if clip is None:
                continue
            try:
                absent.append(embedder.reference(f"{item.id}/{person}", clip))
            except InvalidSpeakerReference as error:
                print(f"skip {item.id}/{person}: {error}")
    print(f"threshold {threshold}; call {len(samples) / RATE:.1f} s after the references were cut out; {len(absent)} absent voices")

    scored = scored_reference(call_reference)
    for constraint in ({"num_speakers": 2}, {}):
        turns = diarize_speech(diarizer, samples, detect_speech(samples), **constraint)
        hypothesis = Annotation(uri=CALL)
        for i, turn in enumerate(turns):
            hypothesis[Segment(turn.start, turn.end), i] = turn.speaker
        truth = {label: person for person, label in labels.items()}
        # cluster -> person, by the reference RTTM (on the scored audio only)
        mapping = {cluster: truth.get(label) for cluster, label in DiarizationErrorRate().optimal_mapping(scored, hypothesis).items()}
        centroids = embedder.speaker_centroids(samples, turns)
        matches = {m.name: m for m in match_speakers(centroids, known, threshold)}
        named = ", ".join(f"{name} -> {m.cluster} ({m.similarity:.3f}, {'correct' if m.cluster and mapping.get(m.cluster) == name else 'WRONG'})" for name, m in matches.items())
        print(f"\n{constraint or 'automatic count'}: {len(centroids)} speakers; {named}")
        assigned, displaced, best = [], [], []
        for voice in absent:
            with_absent = {m.name: m for m in match_speakers(centroids, [*known, voice], threshold)}
            best.append(with_absent[voice.name].similarity)
            if with_absent[voice.name].cluster is not None:
                assigned.append(voice.name)
            if any(with_absent[name].cluster != matches[name].cluster for name in ("Diane", "Sheila")):
                displaced.append(voice.name)
        order = np.argsort(best)[::-1]
        print(f"absent voices: {len(assigned)} of {len(absent)} assigned {assigned}; {len(displaced)} displaced a name {displaced}")
        print(f"absent voices' best similarity to any speaker: max {max(best):.3f} ({absent[order[0]].name}), median {np.median(best):.3f}")


if __name__ == "__main__":
    main()
