"""Speaker identification: diarized speakers named after reference voices.

A reference (2-10 s of one person's speech) is embedded with the diarization pipeline's own embedding
model, as is each final speaker's own speech (after block linking), so both live in one space. Each
name goes to at most one speaker and each speaker gets at most one name (Hungarian assignment on
cosine similarity); only pairs at or above the calibrated threshold are named
(``scripts/calibrate_speaker_id.py``), the other speakers stay ``SPEAKER_xx``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from pyannote.core import Annotation, Segment
from scipy.optimize import linear_sum_assignment

from audio import load_audio
from config import MAX_REFERENCE_SECONDS, MIN_REFERENCE_SECONDS
from diarization.blocks import centroid
from diarization.speech_detection import SAMPLING_RATE, detect_speech
from diarization.voiceprints import Voiceprint
from errors import AudioTooLong, EndpointError, InvalidSpeakerReference
from schemas import SpeakerMatch, SpeakerSegment

# A reference must hold at least this much speech (Silero VAD): less gives an unreliable embedding.
MIN_REFERENCE_SPEECH_SECONDS = 1.0


class SpeakerEmbedder:
    """The diarization pipeline's embedding model (the CAM++ checkpoint its ``config.yaml`` names,
    loaded once by ``diarization.blocks.embedding_inference``), applied to whole clips: references,
    and each final speaker's own speech, so names and speakers are compared in one space."""

    def __init__(self, inference: Any):
        # pyannote ``Inference(window="whole")``: {"waveform": (1, samples), "sample_rate"} -> (dimension,)
        self._inference = inference
        self.model_id = model_fingerprint(inference.model)

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """Unit-length embedding of 16 kHz mono samples."""
        waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).reshape(1, -1)
        with torch.inference_mode():
            embedding = np.asarray(self._inference({"waveform": waveform, "sample_rate": SAMPLING_RATE}), dtype=np.float64).reshape(-1)
        norm = np.linalg.norm(embedding)
        if not np.isfinite(norm) or norm == 0:
            raise InvalidSpeakerReference("the reference gave no usable voice embedding (too little speech)")
        return embedding / norm

    def speaker_centroids(self, samples: np.ndarray, turns: list[SpeakerSegment]) -> dict[str, np.ndarray]:
        """Each diarized speaker's embedding, from their longest turns (``diarization.blocks.centroid``)
        with overlapped speech cut out where enough clean speech remains: the other voice would pull
        the embedding towards it."""
        annotation = Annotation()
        for i, turn in enumerate(turns):
            annotation[Segment(turn.start, turn.end), i] = turn.speaker
        overlapped = annotation.get_overlap()
        centroids = {}
        for speaker in annotation.labels():
            timeline = annotation.label_timeline(speaker).support()
            clean = timeline.extrude(overlapped) if overlapped else timeline
            if clean.duration() >= MIN_REFERENCE_SPEECH_SECONDS:
                timeline = clean
            spans = [SpeakerSegment(speaker=speaker, start=s.start, end=s.end) for s in timeline]
            centroids[speaker] = centroid(self._inference, samples, spans)
        return centroids

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
