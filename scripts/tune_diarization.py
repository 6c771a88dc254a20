"""Tune the offline diarization pipeline's clustering on the dev diarization items (with a reference).

Items are diarized as the endpoint diarizes them: ``diarization.speech_detection.detect_speech`` (Silero speech regions, the
handler's arguments), then ``diarization.blocks.diarize_speech`` (only those regions, joined, through
``Diarizer.diarize``), turns mapped back to the file's timeline. The speech regions, and the
segmentation and embeddings of each joined audio, do not depend on the tuned parameters, so they are
computed once per item and cached; each trial re-runs only clustering and reconstruction. The
objective is pyannote's own: aggregate DER over the dev items, collar 0, overlap scored, inside each
item's UEM; among parameters within ``TIE`` of the lowest, more right speaker counts win.

    python scripts/tune_diarization.py [--grid small|reassignment|medium|wide] [--objective der|counts]

prints the configured and the fitted (best on all items) parameters' figures, and the leave-one-out
cross-validated figure: each item scored with the parameters best on the other items.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

import torch  # noqa: E402
from pyannote.core import Annotation, Segment, Timeline  # noqa: E402
from pyannote.database.util import load_rttm, load_uem  # noqa: E402
from pyannote.metrics.diarization import DiarizationErrorRate  # noqa: E402

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))
from bench.data import data_dir, manifest_rows  # noqa: E402

DEFAULT_PIPELINE = REPO_DIR / "models" / "pyannote-diarization"


@dataclass
class DevItem:
    id: str
    audio: Path
    reference: Annotation
    uem: Timeline | None
    samples: torch.Tensor  # (1, samples) at 16 kHz, decoded as the endpoint decodes

    def file(self) -> dict:
        return {"uri": self.id, "waveform": self.samples, "sample_rate": 16000}


def dev_items(root: Path | None = None) -> list[DevItem]:
    """Every row of the dev data's ``diarization`` manifest (under ``root``, by default
    :func:`bench.data.data_dir`) that has an RTTM reference."""
    from audio import load_audio

    items = []
    for row in manifest_rows("diarization", root):
        if not row.get("rttm"):
            continue
        annotations = load_rttm(row["rttm"])
        # RTTM uris differ from manifest ids (and an empty RTTM has none): one file, one annotation.
        reference = next(iter(annotations.values())) if annotations else Annotation(uri=row["id"])
        uem = next(iter(load_uem(row["uem"]).values())) if row.get("uem") else None
        audio = load_audio(Path(row["audio"]).read_bytes())
        items.append(DevItem(row["id"], Path(row["audio"]), reference, uem, torch.from_numpy(audio.samples).unsqueeze(0)))
    return items


def der(item: DevItem, hypothesis: Annotation, collar: float) -> tuple[float, dict]:
    metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
    # Without a UEM, score the whole file.
    uem = item.uem or Timeline([Segment(0.0, item.samples.shape[-1] / 16000)])
    components = metric(item.reference, hypothesis, uem=uem, detailed=True)
    return components["diarization error rate"], components


def as_hypothesis(uri: str, turns) -> Annotation:
    """``SpeakerSegment`` turns as a pyannote ``Annotation`` to score."""
    hypothesis = Annotation(uri=uri)
    for turn in turns:
        hypothesis[Segment(turn.start, turn.end), len(hypothesis)] = turn.speaker
    return hypothesis


def cache_embeddings(pipeline) -> None:
    """Memoize ``get_embeddings`` per file: they depend only on the audio and segmentation."""
    original = pipeline.get_embeddings
    cache: dict[str, object] = {}

    def cached(file, binary_segmentations, exclude_overlap=False, hook=None):
        if file["uri"] not in cache:
            cache[file["uri"]] = original(file, binary_segmentations, exclude_overlap=exclude_overlap, hook=hook)
        return cache[file["uri"]]

    pipeline.get_embeddings = cached
    pipeline.training = True  # the pipeline then caches segmentations in each file dict


class CachedPipeline:
    """The diarization pipeline as ``Diarizer.diarize`` calls it, computing each audio's segmentation
    and embeddings once (keyed by its samples): later calls, with other clustering parameters
    (``instantiate``), re-run only clustering and reconstruction."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline
        self.files: dict[str, dict] = {}
        cache_embeddings(pipeline)

    def __call__(self, file: dict, **kwargs: Any):
        key = hashlib.sha1(file["waveform"].numpy().tobytes()).hexdigest()
        return self.pipeline(self.files.setdefault(key, {**file, "uri": key}), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)


def load_diarizer(pipeline: Path, cached: bool = False):
    """The endpoint's ``Diarizer`` on CPU (``Diarizer.load``, as the handler loads it)."""
    from config import ModelSettings
    from diarization_utils import Diarizer

    diarizer = Diarizer.load(ModelSettings(_env_file=None, diarization_model=str(pipeline), device="cpu"), REPO_DIR)
    return Diarizer(CachedPipeline(diarizer.pipeline), diarizer.name) if cached else diarizer


Errors = dict[float, tuple[float, float]]  # collar -> (error seconds, reference seconds)
COLLARS = (0.0, 0.25)


def item_errors(diarizer, item: DevItem, regions, params: dict) -> tuple[Errors, int]:
    """One item's DER components at collar 0 and 0.25 s on the deployed path, and its speaker count."""
    from diarization.blocks import diarize_speech

    diarizer.pipeline.instantiate(params)
    hypothesis = as_hypothesis(item.id, diarize_speech(diarizer, item.samples[0].numpy(), regions))
    errors = {}
    for collar in COLLARS:
        _, components = der(item, hypothesis, collar=collar)
        errors[collar] = (components["false alarm"] + components["missed detection"] + components["confusion"], components["total"])
    return errors, len(hypothesis.labels())


def aggregate(per_item: list[Errors], collar: float) -> float:
    return sum(e[collar][0] for e in per_item) / sum(e[collar][1] for e in per_item)


GRIDS = {
    # around the configured values (24 points)
    "small": {
        "clustering": {"threshold": [0.65, 0.7, 0.75], "min_cluster_size": [6, 12], "min_active_ratio": [0.02, 0.05], "small_cluster_threshold": [0.5]},
        "reassignment": {"window_s": [1.0], "margin": [0.1, 2.0]},
    },
    # the clustering as configured, the reassignment's window and margin free (15 points)
    "reassignment": {
        "clustering": {},
        "reassignment": {"window_s": [1.0, 1.5, 2.0], "margin": [0.0, 0.05, 0.1, 0.2, 2.0]},
    },
    # small_cluster_threshold and the reassignment free too (360 points)
    "medium": {
        "clustering": {"threshold": [0.65, 0.7, 0.75], "min_cluster_size": [6, 12], "min_active_ratio": [0.02, 0.05], "small_cluster_threshold": [0.3, 0.5, 0.7]},
        "reassignment": {"window_s": [1.0, 1.5], "margin": [0.0, 0.05, 0.1, 0.2, 2.0]},
    },
    # wider: more freedom to overfit nine items; 2.0 never keeps a small cluster (pyannote's rule), a margin of 2.0 never reassigns
    "wide": {
        "clustering": {"threshold": [0.6, 0.65, 0.7, 0.75, 0.8], "min_cluster_size": [3, 6, 12], "min_active_ratio": [0.02, 0.05, 0.1], "small_cluster_threshold": [0.3, 0.5, 0.7, 2.0]},
        "reassignment": {"window_s": [1.0, 2.0], "margin": [0.0, 0.1, 0.2, 2.0]},
    },
}
TIE = 0.001  # aggregate DER differences under this (0.15 s of the dev speech) are ties, broken by speaker counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=data_dir())
    parser.add_argument("--pipeline", type=Path, default=DEFAULT_PIPELINE)
    parser.add_argument("--grid", choices=GRIDS, default="small")
    parser.add_argument("--objective", choices=("der", "counts"), default="der", help="der: lowest aggregate DER (near-ties: more right counts); counts: most right speaker counts, then lowest DER")
    args = parser.parse_args()
    grid = GRIDS[args.grid]
    torch.set_num_threads(1)  # shared 2-core machines: one thread is faster than two contended ones

    from diarization.speech_detection import detect_speech

    diarizer = load_diarizer(args.pipeline, cached=True)
    items = dev_items(args.data_dir)
    regions = [detect_speech(item.samples[0].numpy()) for item in items]  # as the handler calls it
    default = diarizer.pipeline.parameters(instantiated=True)
    references = [len(item.reference.labels()) for item in items]

    found: dict[str, list[int]] = {}  # speaker counts found, per trial

    def run(params: dict) -> tuple[dict, list[Errors], list[bool]]:
        results = [item_errors(diarizer, item, r, params) for item, r in zip(items, regions)]
        found[repr(params)] = [n for _, n in results]
        return params, [e for e, _ in results], [n == expected > 0 for (_, n), expected in zip(results, references)]

    # Every grid point on every item, once: (params, per-item errors, per-item right count).
    names = [(group, name) for group, values in grid.items() for name in values]
    points = itertools.product(*(values for group in grid.values() for values in group.values()))

    def grid_point(values: tuple) -> dict:
        params = {group: dict(default[group]) for group in default}
        for (group, name), value in zip(names, values):
            params[group][name] = value
        return params

    trials = [run(grid_point(values)) for values in points]

    def best(indices: list[int]) -> tuple:
        # lowest aggregate DER (collar 0) over these items; near-ties go to more right speaker counts
        scores = [aggregate([t[1][i] for i in indices], 0.0) for t in trials]
        if args.objective == "counts":
            return trials[min(range(len(trials)), key=lambda k: (-sum(trials[k][2][i] for i in indices), scores[k]))]
        near = [k for k, score in enumerate(scores) if score <= min(scores) + TIE]
        return trials[min(near, key=lambda k: (-sum(trials[k][2][i] for i in indices), scores[k]))]

    everything = list(range(len(items)))
    print(f"grid: {grid} ({len(trials)} points); objective: {args.objective}")
    for name, (params, errors, counts) in (("configured", run(default)), ("fitted on all items", best(everything))):
        print(f"{name}: DER collar 0 {aggregate(errors, 0.0):.4f}, collar 0.25 {aggregate(errors, 0.25):.4f}; right speaker count {sum(counts)} of {sum(r > 0 for r in references)}; {params['clustering']} {params['reassignment']}")
        print("  speakers found / reference: " + ", ".join(f"{item.id.removeprefix('pyannote_ami_debug_')} {n}/{r}" for item, n, r in zip(items, found[repr(params)], references)))
    # Leave-one-out: each item is scored with the parameters that are best on the other items.
    held_out, right = [], 0
    print("leave-one-out (each item scored with the parameters best on the others):")
    for i in everything:
        params, errors, counts = best([j for j in everything if j != i])
        held_out.append(errors[i])
        right += counts[i]
        rates = [errors[i][c][0] / errors[i][c][1] if errors[i][c][1] else float("nan") for c in COLLARS]
        print(f"  {items[i].id:30} DER {rates[0]:.3f} / {rates[1]:.3f}, speakers {found[repr(params)][i]} of {references[i]}; {params['clustering']} {params['reassignment']}")
    print(f"leave-one-out: DER collar 0 {aggregate(held_out, 0.0):.4f}, collar 0.25 {aggregate(held_out, 0.25):.4f}; right speaker count {right}")


if __name__ == "__main__":
    main()
