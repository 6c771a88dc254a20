"""How far a WER figure moves under changes nobody can hear, and whether two systems differ by more
than that.

    python -m bench.stability [--systems ours-ct2-int8,ours-transformers] [--set asr_short] [--json FILE]

Every system (names as in ``python -m bench``) transcribes the set as it is and under label-keeping
perturbations: gain 0.8 and 1.2, white noise 50-60 dB below each clip's power (three seeds), 10 and
25 ms of leading silence. Per system: the corpus WER of each variant, their mean and range. For the
first two systems: the difference on each variant, and a paired bootstrap over the clips of the
unperturbed set (95 % interval of the corpus-WER difference). A gap inside those is one this set
cannot tell from noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from bench.__main__ import SYSTEMS, load_set  # noqa: E402
from eval_client.metrics import EditCounts, total, word_counts  # noqa: E402

Perturbation = Callable[[np.ndarray, int], np.ndarray]  # (16 kHz samples, clip index) -> samples


def _gain(factor: float) -> Perturbation:
    return lambda samples, index: np.clip(samples * factor, -1.0, 1.0).astype(np.float32)


def _white_noise(snr_db: float, seed: int) -> Perturbation:
    def add(samples: np.ndarray, index: int) -> np.ndarray:
        power = float(np.mean(samples.astype(np.float64) ** 2)) or 1e-10
        noise = np.random.default_rng([seed, index]).normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), samples.shape)
        return (samples + noise).astype(np.float32)

    return add


def _leading_silence(seconds: float) -> Perturbation:
    return lambda samples, index: np.concatenate([np.zeros(round(seconds * 16000), np.float32), samples])


PERTURBATIONS: dict[str, Perturbation] = {
    "none": lambda samples, index: samples,
    "gain0.8": _gain(0.8),
    "gain1.2": _gain(1.2),
    "noise60dB-seed0": _white_noise(60, 0),
    "noise50dB-seed1": _white_noise(50, 1),
    "noise50dB-seed2": _white_noise(50, 2),
    "lead10ms": _leading_silence(0.010),
    "lead25ms": _leading_silence(0.025),
}


def paired_bootstrap(first: list[EditCounts], second: list[EditCounts], resamples: int = 10000, seed: int = 0) -> dict:
    """Corpus WER of ``second`` minus ``first`` on the same items, and its 95 % interval when the
    items are drawn again with replacement (both systems always on the same draw)."""
    errors = np.array([[c.substitutions + c.deletions + c.insertions for c in counts] for counts in (first, second)], dtype=float)
    words = np.array([c.reference_length for c in first], dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(words), size=(resamples, len(words)))
    differences = (errors[1][draws].sum(1) - errors[0][draws].sum(1)) / np.maximum(words[draws].sum(1), 1.0)
    low, high = np.percentile(differences, [2.5, 97.5])
    return {"difference": round(float((errors[1].sum() - errors[0].sum()) / max(words.sum(), 1.0)), 4), "ci95": [round(float(low), 4), round(float(high), 4)]}


def measure(systems: list[str], rows: list[dict], variants: list[str]) -> dict:
    """Per system and variant: the corpus WER and every scored item's edit counts."""
    scored = [row for row in rows if row.get("text")]
    if not scored:
        raise ValueError("no item of the set has a reference text: nothing to score")
    results: dict = {}
    for system in systems:
        transcribe = SYSTEMS[system]()
        for variant in variants:
            perturb = PERTURBATIONS[variant]
            counts = [word_counts(row["text"], transcribe(perturb(row["samples"], index))) for index, row in enumerate(scored)]
            results.setdefault(system, {})[variant] = {"wer": round(total(counts).error_rate, 4), "counts": counts}
            print(f"{system:<28} {variant:<24} WER {results[system][variant]['wer']:.4f}", file=sys.stderr, flush=True)
        del transcribe
    return results


def summarize(results: dict, resamples: int = 10000) -> dict:
    systems = list(results)
    summary: dict = {"systems": {}}
    for system, variants in results.items():
        wers = [v["wer"] for v in variants.values()]
        summary["systems"][system] = {"wer": {name: v["wer"] for name, v in variants.items()}, "mean": round(float(np.mean(wers)), 4), "range": [min(wers), max(wers)]}
    if len(systems) >= 2:
        first, second = (results[s] for s in systems[:2])
        shared = [v for v in first if v in second]
        summary["comparison"] = {
            "second_minus_first": f"{systems[1]} - {systems[0]}",
            "per_variant": {v: round(second[v]["wer"] - first[v]["wer"], 4) for v in shared},
            "mean": round(float(np.mean([second[v]["wer"] - first[v]["wer"] for v in shared])), 4),
        }
        if "none" in shared:
            summary["comparison"]["paired_bootstrap"] = paired_bootstrap(first["none"]["counts"], second["none"]["counts"], resamples)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.stability", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="ours-ct2-int8,ours-transformers", help=f"comma-separated, from {', '.join(SYSTEMS)}")
    parser.add_argument("--set", default="asr_short")
    parser.add_argument("--variants", default=",".join(PERTURBATIONS), help="comma-separated, from: " + ", ".join(PERTURBATIONS))
    parser.add_argument("--limit", type=int, help="only the first N items")
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args(argv)
    systems, variants = args.systems.split(","), args.variants.split(",")
    unknown = [name for name in systems if name not in SYSTEMS] + [name for name in variants if name not in PERTURBATIONS]
    if unknown:
        parser.error(f"unknown system or variant: {', '.join(unknown)}")
    rows = load_set(args.set)[: args.limit]
    summary = {"set": args.set, "items": len(rows), **summarize(measure(systems, rows, variants), args.resamples)}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
