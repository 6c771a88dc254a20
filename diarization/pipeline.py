"""pyannote.audio's ``SpeakerDiarization`` for a pipeline that has no PLDA (the offline one in ``models/``).

The stock constructor always loads a PLDA (from the hub by default) although only VBx clustering uses
it; this subclass skips that, so a local pipeline directory never touches the network. Clustering is
``SpeakerClustering`` (below). Embeddings come
from one pass of CAM++ over the recording (``CAMPPlus.embed_chunks``) instead of one pass per
segmentation chunk: chunks overlap by 90 %, so the stock loop computed every frame ten times. The rest
(segmentation, reconstruction, output) is the stock pipeline, referenced by name from the pipeline's
``config.yaml``, plus one stage after reconstruction, ``WindowReassignment``: the speaker of each
second of single-speaker speech is checked against its own embedding.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from pyannote.audio.core.plda import PLDA
from pyannote.audio.pipelines.clustering import AgglomerativeClustering
from pyannote.audio.pipelines.speaker_diarization import SpeakerDiarization
from pyannote.core import SlidingWindowFeature
from pyannote.pipeline import Pipeline
from pyannote.pipeline.parameter import Uniform
from scipy.cluster.hierarchy import fcluster, linkage

from diarization.embedding import CAMPPlus


# Tuned on the dev diarization items by scripts/tune_diarization.py on the endpoint's path (VAD speech
# regions only; figures, cross-validated, in the README); scripts/build_diarization.py writes them into
# the pipeline's config.yaml.
# Why min_active_ratio 0.02, min_cluster_size 6: on VAD-cut speech, a speaker of a few words still gets enough embeddings to count.
TUNED_PARAMETERS: dict[str, Any] = {
    "segmentation": {"min_duration_off": 0.0},
    "clustering": {"method": "centroid", "threshold": 0.7, "min_cluster_size": 6, "min_active_ratio": 0.02, "small_cluster_threshold": 0.5},
    "reassignment": {"window_s": 1.0, "margin": 0.1},
}


class SpeakerClustering(AgglomerativeClustering):
    """pyannote's agglomerative clustering, changed where it got speaker counts wrong on meetings.

    - Embeddings with at least ``min_active_ratio`` of a chunk of clean (non-overlapped) speech are
      clustered (pyannote: 0.2, i.e. 2 s of a 10 s chunk): a quiet participant who only says a few
      words otherwise has no embedding at all and can never become a speaker.
    - A cluster smaller than ``min_cluster_size`` stays a speaker of its own when its centroid is
      farther than ``small_cluster_threshold`` (cosine distance) from every large cluster (pyannote
      always merges it into the nearest large one): few embeddings, but a clearly different voice.
    - Each chunk's local speakers go to different clusters (constrained, Hungarian assignment): the
      segmentation already says they are different people.
    Speaker-count constraints (``num_speakers``, ``min_speakers``, ``max_speakers``) are pyannote's.
    """

    def __init__(self, metric: str = "cosine", constrained_assignment: bool = True):
        super().__init__(metric=metric, constrained_assignment=constrained_assignment)
        self.min_active_ratio = Uniform(0.0, 0.5)
        self.small_cluster_threshold = Uniform(0.0, 2.0)

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        hard_clusters, soft_clusters, centroids = super().__call__(*args, **kwargs)
        call = _current_call.get()
        if call is not None:  # for the reassignment stage, which pyannote's apply does not give them to
            call.centroids = centroids
        return hard_clusters, soft_clusters, centroids

    def filter_embeddings(self, embeddings: np.ndarray, segmentations: SlidingWindowFeature | None = None, min_active_ratio: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ratio = self.min_active_ratio if min_active_ratio is None else min_active_ratio
        return super().filter_embeddings(embeddings, segmentations=segmentations, min_active_ratio=ratio)

    def cluster(self, embeddings: np.ndarray, min_clusters: int | None = None, max_clusters: int | None = None, num_clusters: int | None = None) -> np.ndarray:
        num_embeddings = embeddings.shape[0]
        if num_embeddings < 2 or num_clusters is not None:
            return super().cluster(embeddings, min_clusters=min_clusters, max_clusters=max_clusters, num_clusters=num_clusters)
        unit = _unit(embeddings)
        # centroid linkage on unit vectors (as pyannote does for the cosine metric)
        clusters = fcluster(linkage(unit, method=self.method, metric="euclidean"), self.threshold, criterion="distance") - 1
        labels, sizes = np.unique(clusters, return_counts=True)
        min_size = min(self.min_cluster_size, max(1, round(0.1 * num_embeddings)))  # pyannote's rule
        large = labels[sizes >= min_size]
        if len(large) == 0:
            large = labels[[np.argmax(sizes)]]
        centroids = {k: _unit(unit[clusters == k].mean(axis=0)) for k in labels}
        kept = [k for k in labels if k in large or min(1.0 - centroids[k] @ centroids[j] for j in large) > self.small_cluster_threshold]
        if not (min_clusters or 1) <= len(kept) <= (max_clusters or num_embeddings):
            # outside the caller's bounds: pyannote's search of the dendrogram for a fitting count
            return super().cluster(embeddings, min_clusters=min_clusters, max_clusters=max_clusters, num_clusters=None)
        kept_centroids = np.stack([centroids[k] for k in kept])
        index = {k: i for i, k in enumerate(kept)}
        return np.array([index[k] if k in index else int(np.argmax(kept_centroids @ x)) for k, x in zip(clusters, unit)])


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Vectors (the last axis) scaled to unit length."""
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


class WindowReassignment(Pipeline):
    """Each window (``window_s``, every ``hop_s``) of single-speaker speech gets the speaker whose
    cluster centroid is nearest its own embedding, when that is nearer than the speaker the
    reconstruction gave it by more than ``margin`` (cosine similarity); the window's middle hop is
    relabelled. Overlapped frames are left as they are.

    Why: reconstruction averages each speaker's activity over the ~10 overlapping segmentation chunks
    that see a frame. Where most chunks merge two voices into one local speaker and only a few
    separate them, the quieter voice loses every frame, although clustering found it as a speaker of
    its own (on meetings, a participant answering briefly). Its embedding still says who speaks, so
    this is the resegmentation step of x-vector/VBx systems with cosine scoring instead of a PLDA.
    """

    def __init__(self, hop_s: float = 0.25):
        super().__init__()
        self.hop_s = hop_s
        self.window_s = Uniform(0.5, 4.0)
        self.margin = Uniform(-1.0, 2.0)  # 2: never (cosine similarities differ by at most 2)

    def __call__(self, diarization: SlidingWindowFeature, centroids: np.ndarray, embed_windows: Callable[[np.ndarray, int, int], np.ndarray], frame_rate: float) -> SlidingWindowFeature:
        """``diarization``: (frames, speakers) 0/1, speakers aligned with ``centroids`` rows;
        ``embed_windows(weights, window_frames, hop_frames)``: embeddings of windows over frames at
        ``frame_rate`` per second (``CAMPPlus.embed_windows``)."""
        activity = np.nan_to_num(diarization.data)
        num_speakers = activity.shape[1]
        # centroid rows are cluster indices; a last cluster with no active speaker has no column
        if num_speakers < 2 or centroids is None or len(centroids) < num_speakers or not np.isfinite(centroids[:num_speakers]).all():
            return diarization
        centroids = centroids[:num_speakers]
        frames = diarization.sliding_window
        window_frames, hop_frames = max(2, round(self.window_s * frame_rate)), max(1, round(self.hop_s * frame_rate))
        # the diarization's frames, looked up at the embedding frames' centres
        num_embedding_frames = round((frames.start + frames.step * len(activity) + frames.duration) * frame_rate)
        times = (np.arange(num_embedding_frames) + 0.5) / frame_rate
        lookup = np.clip(np.rint((times - frames.start - frames.duration / 2) / frames.step).astype(int), 0, len(activity) - 1)
        single = activity.sum(axis=1) == 1
        owner = np.where(single, activity.argmax(axis=1), -1)[lookup]
        if num_embedding_frames < window_frames:
            return diarization
        embeddings = embed_windows((owner >= 0).astype(np.float32), window_frames, hop_frames)
        starts = np.arange(len(embeddings)) * hop_frames
        # frames of each speaker per window, from cumulative counts
        counts = np.concatenate([np.zeros((1, num_speakers)), np.cumsum(owner[:, None] == np.arange(num_speakers), axis=0)])
        per_window = counts[starts + window_frames] - counts[starts]
        voiced = per_window.sum(axis=1) >= window_frames / 2
        current = per_window.argmax(axis=1)
        similarity = _unit(embeddings) @ _unit(centroids).T
        nearest = similarity.argmax(axis=1)
        rows = np.arange(len(embeddings))
        moved = voiced & (nearest != current) & (similarity[rows, nearest] - similarity[rows, current] > self.margin)
        if not moved.any():
            return diarization
        result = activity.copy()
        centres = frames.start + frames.duration / 2 + frames.step * np.arange(len(activity))
        middles = (starts[moved] + (window_frames - hop_frames) / 2) / frame_rate
        firsts = np.searchsorted(centres, middles)
        lasts = np.searchsorted(centres, middles + hop_frames / frame_rate)
        for first, last, old, new in zip(firsts, lasts, current[moved], nearest[moved]):
            span = first + np.flatnonzero(single[first:last] & (result[first:last, old] == 1))
            result[span, old], result[span, new] = 0, 1
        # Reassignment may bring back a speaker that reconstruction lost, never drop one it kept.
        if (result.sum(axis=0) > 0).sum() < (activity.sum(axis=0) > 0).sum():
            return diarization
        return SlidingWindowFeature(result, frames)


@dataclass
class _Call:
    """What one ``apply`` call's later stages need from its earlier ones (pyannote passes only the
    segmentation, clusters and counts to reconstruction)."""

    file: dict
    features: torch.Tensor | None = None  # CAM++ frame features of the recording
    centroids: np.ndarray | None = None


# per call (and per thread): one pipeline object serves concurrent requests
_current_call: ContextVar[_Call | None] = ContextVar("diarization_call", default=None)


class OfflineSpeakerDiarization(SpeakerDiarization):
    CACHED_FEATURES = "training_cache/embedding_features"

    def __init__(self, clustering: str = "AgglomerativeClustering", **kwargs: Any):
        if clustering == "VBxClustering":
            raise ValueError("VBxClustering needs a PLDA; this pipeline has none (use AgglomerativeClustering)")
        kwargs.pop("plda", None)
        # An uninitialised PLDA passes the constructor's type check without loading anything; the
        # agglomerative clustering never reads it.
        super().__init__(clustering=clustering, plda=PLDA.__new__(PLDA), **kwargs)
        self.clustering = SpeakerClustering(metric=self._embedding.metric)
        self.reassignment = WindowReassignment()

    def default_parameters(self) -> dict[str, Any]:
        return TUNED_PARAMETERS

    def instantiate(self, params: dict) -> "OfflineSpeakerDiarization":
        # A config.yaml written before SpeakerClustering (or the reassignment stage) names only some
        # parameters: the tuned values fill in the rest.
        merged = {name: {**value, **params.get(name, {})} for name, value in TUNED_PARAMETERS.items()}
        merged.update({name: value for name, value in params.items() if name not in TUNED_PARAMETERS})
        return super().instantiate(merged)

    def apply(self, file: dict, **kwargs: Any) -> Any:
        token = _current_call.set(_Call(file))
        try:
            return super().apply(file, **kwargs)
        finally:
            _current_call.reset(token)

    def reconstruct(self, segmentations: SlidingWindowFeature, hard_clusters: np.ndarray, count: SlidingWindowFeature) -> SlidingWindowFeature:
        discrete = super().reconstruct(segmentations, hard_clusters, count)
        call = _current_call.get()
        model = self._embedding.model_
        if call is None or call.centroids is None or not isinstance(model, CAMPPlus):
            return discrete
        if call.features is None:  # get_embeddings did not run (a caller memoized it, as tuning does)
            # in training (tuning) mode, cached in the file as pyannote caches segmentations
            call.features = call.file.get(self.CACHED_FEATURES) if self.training else None
            if call.features is None:
                call.features = model.recording_features(self._audio(call.file)[0].to(next(model.parameters()).device))
            if self.training:
                call.file[self.CACHED_FEATURES] = call.features

        def embed_windows(weights: np.ndarray, window_frames: int, hop_frames: int) -> np.ndarray:
            return model.embed_windows(call.features, torch.from_numpy(weights).to(call.features.device), window_frames, hop_frames).cpu().numpy()

        return self.reassignment(discrete, call.centroids, embed_windows, model.FEATURE_RATE)

    def get_embeddings(self, file: dict, binary_segmentations: SlidingWindowFeature, exclude_overlap: bool = False, hook: Callable | None = None) -> np.ndarray:
        """(chunks, local speakers, dimension) embeddings, as the stock method returns them."""
        model = self._embedding.model_
        if not isinstance(model, CAMPPlus):
            return super().get_embeddings(file, binary_segmentations, exclude_overlap=exclude_overlap, hook=hook)
        masks = np.nan_to_num(binary_segmentations.data, nan=0.0).astype(np.float32)
        if exclude_overlap:
            # As the stock method: drop overlapped frames unless too little speech would remain.
            clean = masks * (masks.sum(axis=2, keepdims=True) < 2)
            window = binary_segmentations.sliding_window
            min_frames = np.ceil(masks.shape[1] * self._embedding.min_num_samples / (window.duration * self._embedding.sample_rate))
            masks = np.where(clean.sum(axis=1, keepdims=True) > min_frames, clean, masks)
        waveform, _ = self._audio(file)
        starts = [chunk.start for chunk, _ in binary_segmentations]
        device = next(model.parameters()).device
        features = model.recording_features(waveform.to(device))
        call = _current_call.get()
        if call is not None:  # kept for the reassignment stage
            call.features = features
        embeddings = model.embed_chunks(features, torch.from_numpy(masks).to(device), starts, binary_segmentations.sliding_window.duration)
        if hook is not None:
            hook("embeddings", None, total=1, completed=1)
        return embeddings.cpu().numpy()
