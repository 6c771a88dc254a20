"""Tune the offline diarization pipeline's clustering on the dev diarization items (with a reference).

Segmentation and embeddings do not depend on the tuned parameters, so they are computed once per
file and cached; each trial re-runs only clustering and reconstruction. The objective is pyannote's
own: aggregate DER over the dev items, collar 0, overlap scored, inside each item's UEM.

    python scripts/tune_diarization.py    # the grid's best (for TUNED_PARAMETERS in diarization_pipeline.py)
                                          # and its leave-one-out cross-validated DER
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

import torch  # noqa: E402
from pyannote.audio import Pipeline  # noqa: E402
from pyannote.core import Annotation, Segment, Timeline  # noqa: E402
from pyannote.database.util import load_rttm, load_uem  # noqa: E402
from pyannote.metrics.diarization import DiarizationErrorRate  # noqa: E402

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))
DEFAULT_DATA_DIR = Path(os.environ.get("ASR_DATA_DIR", REPO_DIR.parent / "shared" / "data"))
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


def dev_items(data_dir: Path = DEFAULT_DATA_DIR) -> list[DevItem]:
    """Every row of ``diarization/manifest.jsonl`` that has an RTTM reference."""
    from audio import load_audio

    folder = data_dir / "diarization"
    items = []
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line) if line.strip() else None
        if not row or not row.get("rttm"):
            continue
        annotations = load_rttm(folder / row["rttm"])
        # RTTM uris differ from manifest ids (and an empty RTTM has none): one file, one annotation.
        reference = next(iter(annotations.values())) if annotations else Annotation(uri=row["id"])
        uem = next(iter(load_uem(folder / row["uem"]).values())) if row.get("uem") else None
        audio = load_audio((folder / row["audio"]).read_bytes())
        items.append(DevItem(row["id"], folder / row["audio"], reference, uem, torch.from_numpy(audio.samples).unsqueeze(0)))
    return items


def der(item: DevItem, hypothesis: Annotation, collar: float) -> tuple[float, dict]:
    metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
    # Without a UEM, score the whole file.
    uem = item.uem or Timeline([Segment(0.0, item.samples.shape[-1] / 16000)])
    components = metric(item.reference, hypothesis, uem=uem, detailed=True)
    return components["diarization error rate"], components


def cache_embeddings(pipeline: Pipeline) -> None:
    """Memoize ``get_embeddings`` per file: they depend only on the audio and segmentation."""
    original = pipeline.get_embeddings
    cache: dict[str, object] = {}

    def cached(file, binary_segmentations, exclude_overlap=False, hook=None):
        if file["uri"] not in cache:
            cache[file["uri"]] = original(file, binary_segmentations, exclude_overlap=exclude_overlap, hook=hook)
        return cache[file["uri"]]

    pipeline.get_embeddings = cached
    pipeline.training = True  # the pipeline then caches segmentations in each file dict


Errors = dict[float, tuple[float, float]]  # collar -> (error seconds, reference seconds)


def item_errors(pipeline: Pipeline, item: DevItem, file: dict, params: dict) -> tuple[Errors, bool]:
    """One item's DER components at collar 0 and 0.25 s, and whether its speaker count is right."""
    pipeline.instantiate(params)
    hypothesis = pipeline(file).speaker_diarization
    errors = {}
    for collar in COLLARS:
        _, components = der(item, hypothesis, collar=collar)
        errors[collar] = (components["false alarm"] + components["missed detection"] + components["confusion"], components["total"])
    return errors, len(hypothesis.labels()) == len(item.reference.labels())


def aggregate(per_item: list[Errors], collar: float) -> float:
    return sum(e[collar][0] for e in per_item) / sum(e[collar][1] for e in per_item)


COLLARS = (0.0, 0.25)
GRID = {
    "threshold": [0.5, 0.6, 0.7, 0.8, 0.9],
    "min_active_ratio": [0.05, 0.1, 0.2],
    "small_cluster_threshold": [0.3, 0.5, 2.0],  # 2.0: never keep a small cluster (pyannote's rule)
    "min_cluster_size": [3, 12],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--pipeline", type=Path, default=DEFAULT_PIPELINE)
    args = parser.parse_args()
    torch.set_num_threads(1)  # shared 2-core machines: one thread is faster than two contended ones

    pipeline = Pipeline.from_pretrained(args.pipeline)
    cache_embeddings(pipeline)
    items = dev_items(args.data_dir)
    files = [item.file() for item in items]
    default = pipeline.parameters(instantiated=True)

    # Every grid point on every item, once: (params, per-item errors, per-item right count).
    trials = []
    for values in itertools.product(*GRID.values()):
        params = {"segmentation": default["segmentation"], "clustering": {**default["clustering"], **dict(zip(GRID, values))}}
        results = [item_errors(pipeline, item, file, params) for item, file in zip(items, files)]
        trials.append((params, [r[0] for r in results], [r[1] for r in results]))

    def best(indices: list[int]) -> tuple:
        # lowest aggregate DER (collar 0) over these items; ties go to more right speaker counts
        return min(trials, key=lambda t: (round(aggregate([t[1][i] for i in indices], 0.0), 4), -sum(t[2][i] for i in indices)))

    everything = list(range(len(items)))
    configured = [item_errors(pipeline, item, file, default) for item, file in zip(items, files)]
    report = (("configured", default, [r[0] for r in configured], [r[1] for r in configured]), ("fitted on all items", *best(everything)))
    with_speakers = [bool(item.reference.labels()) for item in items]
    for name, params, errors, counts in report:
        right = sum(c and s for c, s in zip(counts, with_speakers))
        print(f"{name}: DER collar 0 {aggregate(errors, 0.0):.4f}, collar 0.25 {aggregate(errors, 0.25):.4f}; right speaker count {right} of {sum(with_speakers)}; {params['clustering']}")
    # Leave-one-out: each item is scored with the parameters that are best on the other items.
    held_out, right, chosen = [], 0, []
    for i in everything:
        params, errors, counts = best([j for j in everything if j != i])
        held_out.append(errors[i])
        right += counts[i] and with_speakers[i]
        chosen.append(params["clustering"])
    print(f"leave-one-out: DER collar 0 {aggregate(held_out, 0.0):.4f}, collar 0.25 {aggregate(held_out, 0.25):.4f}; right speaker count {right}")
    for item, params in zip(items, chosen):
        print(f"  {item.id:30} scored with {params}")


if __name__ == "__main__":
    main()
