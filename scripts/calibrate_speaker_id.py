"""Calibrate the speaker-identification threshold (cosine similarity, reference vs cluster centroid).

On the dev diarization items with a reference (the 2-speaker call `pyannote_sample`, the acceptance
test's clip, is left out), each item is diarized as the handler diarizes it (speech only, blocks linked) and its final
speakers mapped to reference speakers (pyannote's optimal mapping); each speaker's centroid is
embedded from their own speech as the handler does (``SpeakerEmbedder.speaker_centroids``). References are cut from each speaker's speech
without overlap (2-10 s) and embedded as the handler embeds them. Pairs:

- same: a reference vs the cluster of the same person in another item (AMI speakers recur across
  excerpts) or in the same item;
- different: a reference vs any cluster of another person, plus short clips of absent voices
  (`asr_short`: LibriSpeech, FLEURS, CMU ARCTIC…) vs every cluster.

Prints both distributions and the threshold that maximises balanced accuracy (the midpoint of the
widest such gap between observed similarities), to put in ``config.DEFAULT_SPEAKER_MATCH_THRESHOLD``.

    python scripts/calibrate_speaker_id.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))
sys.path.insert(0, str(REPO_DIR / "scripts"))

from pyannote.core import Annotation, Segment  # noqa: E402
from pyannote.metrics.diarization import DiarizationErrorRate  # noqa: E402
from bench.data import data_dir  # noqa: E402
from tune_diarization import DEFAULT_PIPELINE, dev_items  # noqa: E402

from audio import load_audio  # noqa: E402
from config import MAX_REFERENCE_SECONDS, MIN_REFERENCE_SECONDS, ModelSettings  # noqa: E402
from diarization.blocks import diarize_speech, embedding_inference  # noqa: E402
from diarization.speaker_identification import SpeakerEmbedder  # noqa: E402
from diarization.speech_detection import detect_speech  # noqa: E402
from diarization_utils import Diarizer  # noqa: E402
from errors import InvalidSpeakerReference  # noqa: E402

HELD_OUT = {"pyannote_sample"}  # the acceptance test's clip: never calibrated on
SAMPLE_RATE = 16000


def exclusive_clip(reference: Annotation, speaker: str, samples: np.ndarray) -> np.ndarray | None:
    """Up to MAX_REFERENCE_SECONDS of ``speaker`` talking alone, pieces joined in time order."""
    alone = reference.label_timeline(speaker).support().extrude(reference.get_overlap())
    pieces, total = [], 0.0
    for segment in alone:
        take = min(segment.duration, MAX_REFERENCE_SECONDS - total)
        if take <= 0.2:
            continue
        pieces.append(samples[int(segment.start * SAMPLE_RATE) : int((segment.start + take) * SAMPLE_RATE)])
        total += take
    return np.concatenate(pieces) if pieces and total >= MIN_REFERENCE_SECONDS else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=data_dir())
    parser.add_argument("--pipeline", default=str(DEFAULT_PIPELINE))
    parser.add_argument("--json", type=Path, help="write the similarities and the chosen threshold here")
    args = parser.parse_args()

    diarizer = Diarizer.load(ModelSettings(_env_file=None, diarization_model=args.pipeline, device="cpu"), REPO_DIR)
    embedder = SpeakerEmbedder(embedding_inference(diarizer))
    clusters = []  # (item, person, centroid)
    references = []  # (item, person, embedding)
    for item in dev_items(args.data_dir):
        if item.id in HELD_OUT or not item.reference.labels():
            continue
        samples = item.samples[0].numpy()
        segments = diarize_speech(diarizer, samples, detect_speech(samples))
        centroids = embedder.speaker_centroids(samples, segments)
        hypothesis = Annotation(uri=item.id)
        for s in segments:
            hypothesis[Segment(s.start, s.end), s.speaker] = s.speaker
        mapping = DiarizationErrorRate().optimal_mapping(item.reference, hypothesis)
        for label, centroid in centroids.items():
            clusters.append((item.id, mapping.get(label, f"{item.id}:{label}"), centroid / np.linalg.norm(centroid)))
        for person in item.reference.labels():
            clip = exclusive_clip(item.reference, person, samples)
            if clip is None:
                continue
            try:
                references.append((item.id, person, embedder.reference(person, clip).embedding))
            except InvalidSpeakerReference as error:
                print(f"skip {item.id}/{person}: {error}")
    for row in (json.loads(line) for line in (args.data_dir / "asr_short" / "manifest.jsonl").read_text().splitlines() if line.strip()):
        if row["id"] in HELD_OUT or not MIN_REFERENCE_SECONDS <= row["duration"] <= MAX_REFERENCE_SECONDS:
            continue
        audio = load_audio((args.data_dir / "asr_short" / row["audio"]).read_bytes())
        references.append(("asr_short", f"absent:{row['id']}", embedder.reference(row["id"], audio.samples).embedding))

    same_cross, same_within, different = [], [], []
    for ref_item, person, embedding in references:
        for cluster_item, cluster_person, centroid in clusters:
            similarity = float(embedding @ centroid)
            if person != cluster_person:
                different.append(similarity)
            elif ref_item == cluster_item:
                same_within.append(similarity)
            else:
                same_cross.append(similarity)
    same = same_cross + same_within
    # Candidate thresholds: midpoints between consecutive observed similarities, so the chosen one
    # keeps a margin on both sides; among equally accurate ones, the widest gap wins.
    values = np.unique(same + different)
    gaps = list(zip(values[:-1], values[1:]))

    def balanced_accuracy(t: float) -> float:
        return float((np.mean(np.array(same) >= t) + np.mean(np.array(different) < t)) / 2)

    low, high = max(gaps, key=lambda gap: (round(balanced_accuracy((gap[0] + gap[1]) / 2), 6), gap[1] - gap[0]))
    threshold = round(float((low + high) / 2), 3)
    accuracy = balanced_accuracy(threshold)

    def describe(name: str, values: list[float]) -> str:
        v = np.array(values)
        return f"{name:<28} n={len(v):4d}  min {v.min():.3f}  p10 {np.percentile(v, 10):.3f}  median {np.median(v):.3f}  p90 {np.percentile(v, 90):.3f}  max {v.max():.3f}"

    print(f"{len(clusters)} clusters, {len(references)} references")
    print(describe("same person, other item", same_cross))
    print(describe("same person, same item", same_within))
    print(describe("different person", different))
    print(f"threshold {threshold} (balanced accuracy {accuracy:.3f}; same >= t: {np.mean(np.array(same) >= threshold):.3f}, different < t: {np.mean(np.array(different) < threshold):.3f})")
    if args.json:
        args.json.write_text(json.dumps({"threshold": threshold, "balanced_accuracy": accuracy, "same_cross": same_cross, "same_within": same_within, "different": different}, indent=1))


if __name__ == "__main__":
    main()
