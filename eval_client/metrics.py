"""Scores: WER/CER (jiwer after Whisper's English normalizer), DER/JER (pyannote.metrics), latency.

Every score keeps its raw counts, so corpus-level figures are sums over items and the reports of
several shards merge exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import jiwer
import numpy as np
from pydantic import BaseModel


@cache
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return _normalizer()(text)


class EditCounts(BaseModel):
    """Alignment counts of a hypothesis against a reference (words or characters)."""

    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def reference_length(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def error_rate(self) -> float | None:
        if self.reference_length == 0:
            return None  # undefined without reference words (insertions still count in the corpus)
        return (self.substitutions + self.deletions + self.insertions) / self.reference_length

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(**{k: getattr(self, k) + getattr(other, k) for k in EditCounts.model_fields})


def word_counts(reference: str, hypothesis: str) -> EditCounts:
    return _counts(jiwer.process_words, normalize(reference), normalize(hypothesis))


def char_counts(reference: str, hypothesis: str) -> EditCounts:
    return _counts(jiwer.process_characters, normalize(reference), normalize(hypothesis))


def _counts(process, reference: str, hypothesis: str) -> EditCounts:
    if not reference and not hypothesis:
        return EditCounts()
    out = process(reference, hypothesis)
    return EditCounts(hits=out.hits, substitutions=out.substitutions, deletions=out.deletions, insertions=out.insertions)


def total(counts: Sequence[EditCounts]) -> EditCounts:
    return sum(counts, EditCounts())


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float | None:
    """Word error rate of the pairs together: errors summed over reference words summed (not a
    mean of per-item rates); None without reference words."""
    return total([word_counts(r, h) for r, h in zip(references, hypotheses, strict=True)]).error_rate


def deletions_only(reference: str) -> EditCounts:
    """A failed request scored as if it returned nothing: every reference word deleted."""
    return word_counts(reference, "")


class DiarizationCounts(BaseModel):
    """pyannote.metrics components: DER (seconds) and JER (per-speaker error sums)."""

    der: dict[str, float]
    jer: dict[str, float]

    @property
    def der_rate(self) -> float:
        from pyannote.metrics.diarization import DiarizationErrorRate

        return DiarizationErrorRate().compute_metric(self.der)

    @property
    def jer_rate(self) -> float | None:
        from pyannote.metrics.diarization import JaccardErrorRate

        return JaccardErrorRate().compute_metric(self.jer) if self.jer["speaker count"] else None

    def __add__(self, other: DiarizationCounts) -> DiarizationCounts:
        return DiarizationCounts(der=_add(self.der, other.der), jer=_add(self.jer, other.jer))


def _add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {key: a[key] + b[key] for key in a}


def diarization_counts(rttm: Path, uem: Path | None, turns: Sequence[tuple[str, float, float]], duration: float, collar: float = 0.0) -> DiarizationCounts:
    """Score speaker turns ``(speaker, start, end)`` against an RTTM reference, within the UEM
    (or the whole audio when there is none)."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.database.util import load_rttm, load_uem
    from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate

    references = load_rttm(str(rttm))
    reference = next(iter(references.values())) if references else Annotation()  # an empty RTTM: no speech
    evaluated = next(iter(load_uem(str(uem)).values())) if uem else Timeline([Segment(0, duration)])
    hypothesis = Annotation()
    for index, (speaker, start, end) in enumerate(turns):
        if end > start:
            hypothesis[Segment(start, end), index] = speaker
    der, jer = DiarizationErrorRate(collar=collar), JaccardErrorRate(collar=collar)
    der(reference, hypothesis, uem=evaluated)
    jer(reference, hypothesis, uem=evaluated)
    return DiarizationCounts(der=dict(der.accumulated_), jer=dict(jer.accumulated_))


class LatencyStats(BaseModel):
    """The k6-style summary of request durations, in seconds."""

    count: int
    mean: float | None = None
    min: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


def latency_stats(latencies: Sequence[float]) -> LatencyStats:
    if not latencies:
        return LatencyStats(count=0)
    values = np.asarray(latencies, dtype=float)
    p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
    return LatencyStats(count=len(values), mean=values.mean(), min=values.min(), p50=p50, p90=p90, p95=p95, p99=p99, max=values.max())
