"""pyannote.audio's ``SpeakerDiarization`` for a pipeline that has no PLDA (the offline one in ``models/``).

The stock constructor always loads a PLDA (from the hub by default) although only VBx clustering uses
it; this subclass skips that, so a local pipeline directory never touches the network. Clustering is
``SpeakerClustering`` (below). Embeddings come
from one pass of CAM++ over the recording (``CAMPPlus.embed_chunks``) instead of one pass per
segmentation chunk: chunks overlap by 90 %, so the stock loop computed every frame ten times. The rest
(segmentation, reconstruction, output) is the stock pipeline, referenced by name from the pipeline's
``config.yaml``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from pyannote.audio.core.plda import PLDA
from pyannote.audio.pipelines.clustering import AgglomerativeClustering
from pyannote.audio.pipelines.speaker_diarization import SpeakerDiarization
from pyannote.core import SlidingWindowFeature
from pyannote.pipeline.parameter import Uniform
from scipy.cluster.hierarchy import fcluster, linkage

from speaker_embedding import CAMPPlus


# Tuned on the dev diarization items by scripts/tune_diarization.py on the endpoint's path (VAD speech
# regions only; figures, cross-validated, in the README); scripts/build_diarization.py writes them into
# the pipeline's config.yaml.
# Why min_active_ratio 0.02, min_cluster_size 6: on VAD-cut speech, a speaker of a few words still gets enough embeddings to count.
TUNED_PARAMETERS: dict[str, Any] = {
    "segmentation": {"min_duration_off": 0.0},
    "clustering": {"method": "centroid", "threshold": 0.7, "min_cluster_size": 6, "min_active_ratio": 0.02, "small_cluster_threshold": 0.5},
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

    def filter_embeddings(self, embeddings: np.ndarray, segmentations: SlidingWindowFeature | None = None, min_active_ratio: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ratio = self.min_active_ratio if min_active_ratio is None else min_active_ratio
        return super().filter_embeddings(embeddings, segmentations=segmentations, min_active_ratio=ratio)

    def cluster(self, embeddings: np.ndarray, min_clusters: int | None = None, max_clusters: int | None = None, num_clusters: int | None = None) -> np.ndarray:
        num_embeddings = embeddings.shape[0]
        if num_embeddings < 2 or num_clusters is not None:
            return super().cluster(embeddings, min_clusters=min_clusters, max_clusters=max_clusters, num_clusters=num_clusters)
        unit = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
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


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


class OfflineSpeakerDiarization(SpeakerDiarization):
    def __init__(self, clustering: str = "AgglomerativeClustering", **kwargs: Any):
        if clustering == "VBxClustering":
            raise ValueError("VBxClustering needs a PLDA; this pipeline has none (use AgglomerativeClustering)")
        kwargs.pop("plda", None)
        # An uninitialised PLDA passes the constructor's type check without loading anything; the
        # agglomerative clustering never reads it.
        super().__init__(clustering=clustering, plda=PLDA.__new__(PLDA), **kwargs)
        self.clustering = SpeakerClustering(metric=self._embedding.metric)

    def default_parameters(self) -> dict[str, Any]:
        return TUNED_PARAMETERS

    def instantiate(self, params: dict) -> "OfflineSpeakerDiarization":
        # A config.yaml written before SpeakerClustering names only pyannote's three clustering
        # parameters: the tuned values fill in the rest.
        merged = {name: {**TUNED_PARAMETERS.get(name, {}), **value} if isinstance(value, dict) else value for name, value in params.items()}
        return super().instantiate(merged)

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
        embeddings = model.embed_chunks(waveform.to(device), torch.from_numpy(masks).to(device), starts, binary_segmentations.sliding_window.duration)
        if hook is not None:
            hook("embeddings", None, total=1, completed=1)
        return embeddings.cpu().numpy()
