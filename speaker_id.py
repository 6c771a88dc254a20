"""Speaker identification: diarized speakers named after reference voices.

A reference (2-10 s of one person's speech) is embedded with the diarization pipeline's own embedding
model, so it lives in the same space as the clusters' centroids. Each name goes to at most one
cluster and each cluster gets at most one name (Hungarian assignment on cosine similarity); only
pairs at or above the calibrated threshold are named (``scripts/calibrate_speaker_id.py``), the other
clusters stay ``SPEAKER_xx``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from audio import load_audio
from config import MAX_REFERENCE_SECONDS, MIN_REFERENCE_SECONDS
from errors import AudioTooLong, EndpointError, InvalidSpeakerReference
from schemas import SpeakerMatch, SpeakerSegment
from vad import SAMPLING_RATE, detect_speech

# A reference must hold at least this much speech (Silero VAD): less gives an unreliable embedding.
MIN_REFERENCE_SPEECH_SECONDS = 1.0


@dataclass(frozen=True)
class Voiceprint:
    """One person's voice: a unit-length embedding and the embedding model that made it."""

    name: str
    embedding: np.ndarray
    model_id: str


class SpeakerEmbedder:
    """The diarization pipeline's embedding model, applied to whole reference clips."""

    def __init__(self, embedding: Any):
        # pyannote's PretrainedSpeakerEmbedding: (batch, 1, samples) -> (batch, dimension) numpy.
        self._embedding = embedding
        self.model_id = model_fingerprint(embedding.model_) if hasattr(embedding, "model_") else type(embedding).__name__

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> "SpeakerEmbedder":
        # The very object the pipeline embeds chunks with (pyannote.audio 4.x keeps it as
        # `_embedding`; requirements.txt holds pyannote.audio below 5), so references and
        # clusters share one embedding space and one device.
        return cls(pipeline._embedding)

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """Unit-length embedding of 16 kHz mono samples."""
        waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).reshape(1, 1, -1)
        embedding = np.asarray(self._embedding(waveform)[0], dtype=np.float64)
        norm = np.linalg.norm(embedding)
        if not np.isfinite(norm) or norm == 0:
            raise InvalidSpeakerReference("the reference gave no usable voice embedding (too little speech)")
        return embedding / norm

    def reference(self, name: str, inputs: Any) -> Voiceprint:
        """A voiceprint from one reference clip (base64, data URL, bytes); InvalidSpeakerReference
        naming the speaker and the problem otherwise."""
        wanted = f"it must be {MIN_REFERENCE_SECONDS:g}-{MAX_REFERENCE_SECONDS:g} s of that person speaking"
        try:
            # The cap stops decoding early: a long file is refused without being decoded whole.
            audio = load_audio(inputs, max_seconds=MAX_REFERENCE_SECONDS + 1)
        except AudioTooLong:
            raise InvalidSpeakerReference(f"reference audio for {name!r} is longer than {MAX_REFERENCE_SECONDS:g} s; {wanted}") from None
        except EndpointError as error:
            raise InvalidSpeakerReference(f"reference audio for {name!r}: {error}") from None
        if audio.duration < MIN_REFERENCE_SECONDS:
            raise InvalidSpeakerReference(f"reference audio for {name!r} is {audio.duration:.1f} s long; {wanted}")
        if audio.duration > MAX_REFERENCE_SECONDS:
            raise InvalidSpeakerReference(f"reference audio for {name!r} is longer than {MAX_REFERENCE_SECONDS:g} s; {wanted}")
        regions = detect_speech(audio.samples, pad_ms=100)
        speech = np.concatenate([audio.samples[int(r.start * SAMPLING_RATE) : int(r.end * SAMPLING_RATE)] for r in regions]) if regions else np.zeros(0, np.float32)
        if len(speech) < MIN_REFERENCE_SPEECH_SECONDS * SAMPLING_RATE:
            raise InvalidSpeakerReference(f"reference audio for {name!r} holds {len(speech) / SAMPLING_RATE:.1f} s of speech; at least {MIN_REFERENCE_SPEECH_SECONDS:g} s is needed (is it silent?)")
        try:
            embedding = self.embed(speech)
        except InvalidSpeakerReference as error:
            raise InvalidSpeakerReference(f"reference audio for {name!r}: {error}") from None
        return Voiceprint(name=name, embedding=embedding, model_id=self.model_id)


def model_fingerprint(model: torch.nn.Module) -> str:
    """``<class>-<dimension>-<hash of the weights>``: the same weights give the same id wherever they
    were loaded from, so a voiceprint is only compared with embeddings of the model that made it."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    dimension = getattr(model, "dimension", "")
    return f"{type(model).__name__}-{dimension}-{digest.hexdigest()[:16]}"


def match_speakers(centroids: dict[str, np.ndarray], voiceprints: list[Voiceprint], threshold: float) -> list[SpeakerMatch]:
    """One match per voiceprint: the cluster it names (Hungarian assignment maximising total cosine
    similarity, kept only at or above ``threshold``) or None, with the similarity either way (for an
    unmatched name, its best cluster's)."""
    if not voiceprints:
        return []
    labels = sorted(centroids)
    if not labels:
        return [SpeakerMatch(name=v.name, cluster=None, similarity=None) for v in voiceprints]
    clusters = np.stack([centroids[label] / np.linalg.norm(centroids[label]) for label in labels])
    similarity = np.stack([v.embedding for v in voiceprints]) @ clusters.T  # (names, clusters)
    assigned = {}
    for row, column in zip(*linear_sum_assignment(similarity, maximize=True)):
        if similarity[row, column] >= threshold:
            assigned[row] = column
    matches = []
    for row, voiceprint in enumerate(voiceprints):
        column = assigned.get(row, int(np.argmax(similarity[row])))
        matches.append(SpeakerMatch(name=voiceprint.name, cluster=labels[column] if row in assigned else None, similarity=round(float(similarity[row, column]), 4)))
    return matches


def rename_speakers(segments: list[SpeakerSegment], matches: list[SpeakerMatch]) -> list[SpeakerSegment]:
    """Segments with matched clusters renamed to their person's name."""
    names = {m.cluster: m.name for m in matches if m.cluster is not None}
    return [s.model_copy(update={"speaker": names.get(s.speaker, s.speaker)}) for s in segments]
