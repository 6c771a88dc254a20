"""Diarize only the speech of an audio, in blocks of bounded size.

``Diarizer.diarize`` runs pyannote over everything it is given: hours of silence cost as much
segmentation as hours of speech, and its agglomerative clustering holds a distance matrix over every
embedding of the file (quadratic memory: the pyannote-audio#1819 OOM on hours-long audio). Here the
VAD's speech regions are cut out and joined, diarized in blocks of at most ``block_s`` seconds of
speech, and the speakers of successive blocks are linked by the centroid embeddings of their speech;
turns are mapped back to the original timeline.
"""

from __future__ import annotations

from dataclasses import dataclass
import weakref
from typing import Any, Callable, Sequence

import numpy as np
import torch

from audio import as_float32
from diarization.speech_detection import SAMPLING_RATE, SpeechRegion
from diarization_utils import Diarizer, annotation_to_segments
from memory import release_freed_memory
from schemas import SpeakerSegment

BLOCK_S = 900.0  # seconds of speech per pyannote call: bounds its clustering's memory
JOIN_GAP_S = 2.0  # regions closer than this are diarized with the pause between them
LINK_THRESHOLD = 0.7  # cosine distance under which speakers of two blocks are the same person
EMBEDDING_SECONDS = 60.0  # of each block speaker's speech, for its centroid
MIN_EMBEDDING_SAMPLES = SAMPLING_RATE // 2


@dataclass(frozen=True)
class Piece:
    """A span of the original audio placed at ``at`` seconds in a block's joined audio."""

    start: float
    end: float
    at: float


def diarize_speech(diarizer: Diarizer, samples: np.ndarray, regions: Sequence[SpeechRegion], *, block_s: float = BLOCK_S, **constraints: int) -> list[SpeakerSegment]:
    """Speaker turns of ``samples`` (16 kHz), diarizing only inside ``regions`` (from
    ``diarization.speech_detection.detect_speech``). No speech: no turns, and no pyannote call."""
    blocks = plan_blocks(regions, len(samples) / SAMPLING_RATE, block_s)
    if not blocks:
        return []
    if len(blocks) == 1:
        return map_back(diarizer.diarize(join(samples, blocks[0]), **constraints), blocks[0])
    # Per block at most the requested speakers; the global count is enforced when linking.
    cap = constraints.get("num_speakers") or constraints.get("max_speakers")
    linker = _Linker(embedding_inference(diarizer), cap)
    for pieces in blocks:
        joined = join(samples, pieces)
        release_freed_memory(collect_cycles=False)  # the pieces join copied
        turns = diarizer.diarize(joined, **({"max_speakers": cap} if cap else {}))
        names = linker.link(joined, turns)
        linker.turns += map_back([turn.model_copy(update={"speaker": names[turn.speaker]}) for turn in turns], pieces)
        del joined
        release_freed_memory()  # else each block's pyannote temporaries stay in the heap
    return linker.finish()


def plan_blocks(regions: Sequence[SpeechRegion], duration: float, block_s: float) -> list[list[Piece]]:
    """Speech regions (nearby ones joined with their pause) packed into blocks of ≤ ``block_s`` s."""
    spans: list[list[float]] = []
    for region in sorted(regions):
        start, end = max(0.0, region.start), min(duration, region.end)
        if end <= start:
            continue
        if spans and start - spans[-1][1] < JOIN_GAP_S:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    blocks: list[list[Piece]] = []
    filled = block_s
    for start, end in spans:
        while end > start:
            if filled >= block_s:
                blocks.append([])
                filled = 0.0
            take = min(end - start, block_s - filled)
            blocks[-1].append(Piece(start, start + take, filled))
            filled += take
            start += take
    return blocks


def join(samples: np.ndarray, pieces: Sequence[Piece]) -> np.ndarray:
    return np.concatenate([as_float32(samples[round(p.start * SAMPLING_RATE) : round(p.end * SAMPLING_RATE)]) for p in pieces])


def map_back(turns: Sequence[SpeakerSegment], pieces: Sequence[Piece]) -> list[SpeakerSegment]:
    """Turns on a block's joined timeline → turns on the original one (split where pieces join)."""
    result = []
    for turn in turns:
        for piece in pieces:
            length = piece.end - piece.start
            start, end = max(turn.start, piece.at), min(turn.end, piece.at + length)
            if end > start:
                offset = piece.start - piece.at
                result.append(SpeakerSegment(speaker=turn.speaker, start=round(start + offset, 3), end=round(end + offset, 3)))
    return sorted(result, key=lambda s: (s.start, s.end, s.speaker))


def centroid(embed: Callable[[dict], Any], samples: np.ndarray, turns: Sequence[SpeakerSegment]) -> np.ndarray:
    """Unit-length embedding of one speaker's ``turns`` of ``samples``: their longest turns, up to
    ``EMBEDDING_SECONDS`` of speech, embedded as one clip by ``embed`` (``embedding_inference``)."""
    longest = sorted(turns, key=lambda t: t.end - t.start, reverse=True)
    clips, total = [], 0.0
    for turn in longest:
        if total >= EMBEDDING_SECONDS:
            break
        clips.append(as_float32(samples[round(turn.start * SAMPLING_RATE) : round(turn.end * SAMPLING_RATE)]))
        total += turn.end - turn.start
    speech = np.concatenate(clips) if clips else np.zeros(0, np.float32)
    # A speaker of a few frames still needs one embedding window (the centroid weighs it by its speech).
    speech = np.pad(speech, (0, max(0, MIN_EMBEDDING_SAMPLES - len(speech))))
    waveform = torch.from_numpy(np.ascontiguousarray(speech, dtype=np.float32)).unsqueeze(0)
    with torch.inference_mode():
        embedding = np.asarray(embed({"waveform": waveform, "sample_rate": SAMPLING_RATE}), dtype=np.float64).reshape(-1)
    # A block's speakers are embedded one after another: without this, each one's temporaries
    # (~0.3 GB for a minute of speech) stay in the heap and add up.
    release_freed_memory(collect_cycles=False)
    return embedding / (np.linalg.norm(embedding) or 1.0)


class _Linker:
    """Names speakers across blocks: each block's speakers are matched one-to-one (two speakers of
    one block are never merged) to the speakers seen so far by the cosine distance of their
    centroid embeddings; unmatched ones are new speakers."""

    def __init__(self, embed: Callable[[dict], Any], cap: int | None):
        self.embed = embed
        self.cap = cap
        self.centroids: list[np.ndarray] = []
        self.weights: list[float] = []
        self.turns: list[SpeakerSegment] = []

    def link(self, joined: np.ndarray, turns: Sequence[SpeakerSegment]) -> dict[str, str]:
        from scipy.optimize import linear_sum_assignment

        local = sorted({t.speaker for t in turns})
        if not local:
            return {}
        embeddings, speech = zip(*(self._centroid(joined, [t for t in turns if t.speaker == name]) for name in local))
        names: dict[str, str] = {}
        unmatched = list(range(len(local)))
        if self.centroids:
            distance = 1.0 - np.stack(embeddings) @ np.stack(self.centroids).T
            rows, cols = linear_sum_assignment(distance)
            for row, col in zip(rows, cols):
                if distance[row, col] < LINK_THRESHOLD:
                    names[local[row]] = self._update(col, embeddings[row], speech[row])
                    unmatched.remove(row)
        for row in unmatched:
            self.centroids.append(embeddings[row])
            self.weights.append(speech[row])
            names[local[row]] = str(len(self.centroids) - 1)
        return names

    def _centroid(self, joined: np.ndarray, turns: list[SpeakerSegment]) -> tuple[np.ndarray, float]:
        return centroid(self.embed, joined, turns), sum(t.end - t.start for t in turns)

    def _update(self, index: int, embedding: np.ndarray, weight: float) -> str:
        merged = self.centroids[index] * self.weights[index] + embedding * weight
        self.centroids[index] = merged / (np.linalg.norm(merged) or 1.0)
        self.weights[index] += weight
        return str(index)

    def finish(self) -> list[SpeakerSegment]:
        """Merge the closest speakers while there are more than asked for; name them in order of
        first speech, as ``Diarizer.diarize`` does. (A ``min_speakers`` the blocks did not reach is
        reported by the handler's warning, as for one block.)"""
        groups = {str(i): str(i) for i in range(len(self.centroids))}
        live = list(range(len(self.centroids)))
        while self.cap and len(live) > self.cap:
            similarity = np.stack([self.centroids[i] for i in live]) @ np.stack([self.centroids[i] for i in live]).T
            np.fill_diagonal(similarity, -np.inf)
            a, b = np.unravel_index(np.argmax(similarity), similarity.shape)
            keep, drop = live[min(a, b)], live[max(a, b)]
            self._update(keep, self.centroids[drop], self.weights[drop])
            groups = {k: (str(keep) if v == str(drop) else v) for k, v in groups.items()}
            live.remove(drop)
        from pyannote.core import Annotation, Segment

        annotation = Annotation()
        for i, turn in enumerate(self.turns):
            annotation[Segment(turn.start, turn.end), i] = groups[turn.speaker]
        return annotation_to_segments(annotation)


# One embedding model per loaded pipeline, dropped with it.
_EMBEDDINGS: "weakref.WeakKeyDictionary[Diarizer, Any]" = weakref.WeakKeyDictionary()


def embedding_inference(diarizer: Diarizer) -> Any:
    """pyannote ``Inference`` (whole-window) over the pipeline's own embedding checkpoint, loaded
    once per pipeline through the public ``Model.from_pretrained`` with the pipeline's settings
    (block linking and speaker identification share it)."""
    if diarizer not in _EMBEDDINGS:
        from pyannote.audio import Inference, Model

        spec = diarizer.pipeline.embedding
        model = Model.from_pretrained(**spec) if isinstance(spec, dict) else Model.from_pretrained(spec)
        _EMBEDDINGS[diarizer] = Inference(model, window="whole", device=getattr(diarizer.pipeline, "device", None) or torch.device("cpu"))
    return _EMBEDDINGS[diarizer]
