"""pyannote.audio's ``SpeakerDiarization`` for a pipeline that has no PLDA (the offline one in ``models/``).

The stock constructor always loads a PLDA (from the hub by default) although only VBx clustering uses
it; this subclass skips that, so a local pipeline directory never touches the network. Everything else
(segmentation, embeddings with per-speaker masks, clustering, speaker-count constraints, output) is the
stock pipeline, referenced by name from the pipeline's ``config.yaml``.
"""

from __future__ import annotations

from typing import Any

from pyannote.audio.core.plda import PLDA
from pyannote.audio.pipelines.speaker_diarization import SpeakerDiarization


class OfflineSpeakerDiarization(SpeakerDiarization):
    def __init__(self, clustering: str = "AgglomerativeClustering", **kwargs: Any):
        if clustering == "VBxClustering":
            raise ValueError("VBxClustering needs a PLDA; this pipeline has none (use AgglomerativeClustering)")
        kwargs.pop("plda", None)
        # An uninitialised PLDA passes the constructor's type check without loading anything; the
        # agglomerative clustering never reads it.
        super().__init__(clustering=clustering, plda=PLDA.__new__(PLDA), **kwargs)

    def default_parameters(self) -> dict[str, Any]:
        return {"segmentation": {"min_duration_off": 0.0}, "clustering": {"method": "centroid", "min_cluster_size": 12, "threshold": 0.7}}
