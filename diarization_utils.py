"""Speaker diarization (pyannote.audio) and the merge of speaker turns with the transcript.

Contract used by handler.py:
- ``Diarizer.load(settings, base_dir) -> Diarizer``: hub id (with ``HF_TOKEN``) or local pipeline
  directory, one code path (``Pipeline.from_pretrained``); clear ``ModelLoadError`` otherwise.
- ``Diarizer.diarize(samples16k, num_speakers=None, min_speakers=None, max_speakers=None) -> list[SpeakerSegment]``
- ``merge_speakers(transcript, turns) -> (speakers: list[SpeakerTurn], chunks: list[Chunk], words: list[Word] | None)``
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np

# pyannote.audio 4 sends usage telemetry to pyannote.ai unless told otherwise; a private endpoint
# (often offline) should not. Set PYANNOTE_METRICS_ENABLED=true to opt in.
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

import torch  # noqa: E402
from pyannote.audio import Model, Pipeline  # noqa: E402
from pyannote.core import Annotation  # noqa: E402

from config import ModelSettings, locate_model  # noqa: E402
from errors import InvalidParameters, ModelLoadError  # noqa: E402
from memory import release_freed_memory  # noqa: E402
from schemas import Chunk, SpeakerSegment, SpeakerTurn, Transcript, Word  # noqa: E402

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CPU_SEGMENTATION_BATCH_SIZE = 16
RELEASE_AFTER_S = 300.0
# Speech activity scores each frame with the segmentation windows that cover it: two (a step of half
# the 10 s window) decide speech as well as the pipeline's ten, at a fifth of the cost.
SPEECH_ACTIVITY_STEP = 0.5  # of the segmentation model's window
# Shorter "speech" is a click or a breath, not a word: Silero's own default shortest speech region.
MIN_SPEECH_S = 0.25


class Diarizer:
    """A loaded pyannote speaker-diarization pipeline, fed 16 kHz mono float samples."""

    def __init__(self, pipeline: Pipeline, name: str):
        self.pipeline = pipeline
        self.name = name
        self._speech_activity: Pipeline | None = None
        self._speech_activity_lock = threading.Lock()

    @classmethod
    def load(cls, settings: ModelSettings, base_dir: str | Path) -> "Diarizer":
        if not settings.diarization_model:
            raise ModelLoadError("no diarization model configured (set DIARIZATION_MODEL)")
        name = locate_model(settings.diarization_model, base_dir)
        token = settings.token()
        try:
            pipeline = Pipeline.from_pretrained(name, token=token)
        except Exception as error:  # hub, auth, offline, missing file, bad config: one clear message
            raise ModelLoadError(_load_failure(name, token, error)) from None
        if pipeline is None:
            raise ModelLoadError(_load_failure(name, token, None))
        device = torch.device(settings.resolved_device())
        pipeline.to(device)
        if device.type == "cuda":
            # Larger embedding batches pay off on a GPU (a multiple of 3 keeps a segmentation
            # chunk's 3 local speakers together); on CPU small batches are fastest (measured).
            pipeline.embedding_batch_size = max(pipeline.embedding_batch_size, 48)
        else:
            # Hub pipelines ship 32, sized for a GPU; on CPU 16 is as fast and half the host memory.
            pipeline.segmentation_batch_size = min(pipeline.segmentation_batch_size, CPU_SEGMENTATION_BATCH_SIZE)
        logger.info("diarization pipeline %s loaded on %s", name, device)
        return cls(pipeline, name)

    def diarize(self, samples: np.ndarray, num_speakers: int | None = None, min_speakers: int | None = None, max_speakers: int | None = None) -> list[SpeakerSegment]:
        """Speaker turns (overlapping speech gives overlapping turns), sorted by start time.

        Speakers are named SPEAKER_00, SPEAKER_01… in order of first speech."""
        _check_constraints(num_speakers, min_speakers, max_speakers)
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        # Shorter than one segmentation frame: nothing to diarize (and pyannote would fail on it).
        if samples.size < SAMPLE_RATE // 10:
            return []
        audio = {"waveform": torch.from_numpy(samples).unsqueeze(0), "sample_rate": SAMPLE_RATE}
        with torch.inference_mode():
            # On long audio each step's temporaries go back to the OS before the next step (a cycle
            # collection costs a fraction of a second: not worth it on a short clip).
            hook = _release_after_each_step if samples.size > RELEASE_AFTER_S * SAMPLE_RATE else None
            output = self.pipeline(audio, num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers, hook=hook)
        return annotation_to_segments(as_annotation(output))

    def speech_activity(self, samples: np.ndarray) -> list[tuple[float, float]]:
        """(start, end) seconds where the pipeline's own segmentation model hears anyone speak
        (pyannote's ``VoiceActivityDetection`` over the same checkpoint, loaded once through the
        public ``Model.from_pretrained``; a powerset model's threshold is fixed at 0.5), regions shorter
        than ``MIN_SPEECH_S`` dropped."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size < SAMPLE_RATE // 10:
            return []
        detector = self._speech_activity_pipeline()
        with torch.inference_mode():
            speech = detector({"waveform": torch.from_numpy(samples).unsqueeze(0), "sample_rate": SAMPLE_RATE})
        return [(segment.start, segment.end) for segment in speech.get_timeline().support()]

    def _speech_activity_pipeline(self) -> Pipeline:
        with self._speech_activity_lock:
            if self._speech_activity is None:
                from pyannote.audio.pipelines import VoiceActivityDetection

                model = segmentation_checkpoint(self.pipeline)
                detector = VoiceActivityDetection(segmentation=model, step=SPEECH_ACTIVITY_STEP * model.specifications.duration, batch_size=self.pipeline.segmentation_batch_size)
                detector.to(getattr(self.pipeline, "device", None) or torch.device("cpu"))
                self._speech_activity = detector.instantiate({"min_duration_on": MIN_SPEECH_S, "min_duration_off": 0.0})
            return self._speech_activity


def segmentation_checkpoint(pipeline: Pipeline) -> Model:
    """The diarization pipeline's segmentation model, loaded anew through pyannote's public
    ``Model.from_pretrained`` from the spec the pipeline was built with (a path, a hub id or a dict)."""
    spec = pipeline.segmentation_model
    return Model.from_pretrained(**spec) if isinstance(spec, dict) else Model.from_pretrained(spec)


def _release_after_each_step(step: str, artifact: object, file: object = None, total: int | None = None, completed: int | None = None) -> None:
    """A pyannote pipeline hook: once a step is done, its temporaries go back to the OS, so the
    steps' working memory does not pile up (``memory.release_freed_memory``)."""
    if total is None or completed == total:
        release_freed_memory()


def as_annotation(output: object) -> Annotation:
    """pyannote 4 pipelines return ``DiarizeOutput``; 3.x (and ``legacy=True``) an ``Annotation``."""
    annotation = getattr(output, "speaker_diarization", output)
    if not isinstance(annotation, Annotation):
        raise TypeError(f"unexpected diarization output {type(output).__name__}")
    return annotation


def annotation_to_segments(annotation: Annotation) -> list[SpeakerSegment]:
    annotation = annotation.support()  # merge contiguous turns of one speaker
    first_seen = {label: annotation.label_timeline(label)[0].start for label in annotation.labels()}
    names = {label: f"SPEAKER_{i:02d}" for i, label in enumerate(sorted(first_seen, key=first_seen.get))}
    segments = [SpeakerSegment(speaker=names[label], start=round(turn.start, 3), end=round(turn.end, 3)) for turn, _, label in annotation.itertracks(yield_label=True)]
    return sorted(segments, key=lambda s: (s.start, s.end, s.speaker))


def _check_constraints(num_speakers: int | None, min_speakers: int | None, max_speakers: int | None) -> None:
    # InferenceConfig validates requests; this guards direct callers of the library.
    if any(v is not None and v < 1 for v in (num_speakers, min_speakers, max_speakers)):
        raise InvalidParameters("speaker counts must be at least 1")
    if num_speakers is not None and (min_speakers is not None or max_speakers is not None):
        raise InvalidParameters("num_speakers cannot be combined with min_speakers/max_speakers")
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise InvalidParameters(f"min_speakers ({min_speakers}) is greater than max_speakers ({max_speakers})")


def _load_failure(name: str, token: str | None, error: Exception | None) -> str:
    detail = f" ({type(error).__name__}: {error})" if error is not None else ""
    if token:
        detail = detail.replace(token, "***")  # never echo a secret
    if Path(name).is_dir():
        return f"could not load the diarization pipeline from {name}{detail}; rebuild it with `python scripts/materialize_models.py pyannote-diarization`"
    hint = "check HF_TOKEN and that you accepted the model's conditions on hf.co" if token else "gated pyannote models need HF_TOKEN (and their conditions accepted on hf.co)"
    return f"could not load the diarization pipeline {name!r} from the Hugging Face hub: {hint}; or set DIARIZATION_MODEL to a local pipeline directory{detail}"


# --- merge --------------------------------------------------------------------------------------


def overlap(start: float, end: float, turn: SpeakerSegment) -> float:
    return max(0.0, min(end, turn.end) - max(start, turn.start))


def speaker_at(start: float, end: float, turns: list[SpeakerSegment]) -> str:
    """The speaker who overlaps [start, end] most; with no overlap, the nearest turn's speaker."""
    per_speaker: dict[str, float] = defaultdict(float)
    for turn in turns:
        per_speaker[turn.speaker] += overlap(start, end, turn)
    best = max(per_speaker, key=per_speaker.get)
    if per_speaker[best] > 0:
        return best
    # Gap between the interval and each turn (0 would have been an overlap).
    return min(turns, key=lambda t: max(t.start - end, start - t.end)).speaker


def merge_speakers(transcript: Transcript, turns: list[SpeakerSegment]) -> tuple[list[SpeakerTurn], list[Chunk], list[Word] | None]:
    """Attribute the transcript to speakers.

    With word timestamps each word gets its own speaker (so a long ASR chunk spoken by two people is
    split between them) and speaker turns are rebuilt from consecutive words; chunks keep their
    boundaries and get the speaker holding most of their words' time. Without words, whole chunks
    are attributed (the chunk-level merge). Every word lands in exactly one turn, overlapped speech
    included. No turns (silence, music) or no text: empty ``speakers``, unlabelled chunks."""
    chunks = [c.model_copy() for c in transcript.chunks]
    words = [w.model_copy() for w in transcript.words] if transcript.words is not None else None
    if not turns:
        return [], chunks, words
    if words:
        for word in words:
            word.speaker = speaker_at(word.start, word.end, turns)
        for chunk in chunks:
            chunk.speaker = _chunk_speaker_from_words(chunk, words) or speaker_at(*chunk.timestamp, turns)
        return _group_words(words), chunks, words
    for chunk in chunks:
        chunk.speaker = speaker_at(*chunk.timestamp, turns)
    return _group_chunks(chunks), chunks, words


def _chunk_speaker_from_words(chunk: Chunk, words: list[Word]) -> str | None:
    start, end = chunk.timestamp
    time_per_speaker: dict[str, float] = defaultdict(float)
    for word in words:
        if start <= (word.start + word.end) / 2 <= end:
            time_per_speaker[word.speaker] += max(word.end - word.start, 1e-3)
    return max(time_per_speaker, key=time_per_speaker.get) if time_per_speaker else None


def _group_words(words: list[Word]) -> list[SpeakerTurn]:
    turns: list[SpeakerTurn] = []
    for word in words:
        if turns and turns[-1].speaker == word.speaker:
            turns[-1].words.append(word)
        else:
            turns.append(SpeakerTurn(speaker=word.speaker, text="", timestamp=(word.start, word.end), words=[word]))
    for turn in turns:
        turn.text = " ".join(w.text for w in turn.words).strip()
        turn.timestamp = (turn.words[0].start, turn.words[-1].end)
    return turns


def _group_chunks(chunks: list[Chunk]) -> list[SpeakerTurn]:
    turns: list[SpeakerTurn] = []
    for chunk in chunks:
        if turns and turns[-1].speaker == chunk.speaker:
            turns[-1].text = f"{turns[-1].text} {chunk.text}".strip()
            turns[-1].timestamp = (turns[-1].timestamp[0], chunk.timestamp[1])
        else:
            turns.append(SpeakerTurn(speaker=chunk.speaker, text=chunk.text, timestamp=chunk.timestamp))
    return turns


def overlapped_regions(segments: list[SpeakerSegment]) -> list[tuple[float, float]]:
    """Where diarization hears two or more speakers at once (intersections of different speakers' turns)."""
    regions = []
    for i, a in enumerate(segments):
        for b in segments[i + 1 :]:
            if b.start >= a.end:  # sorted by start: no later turn reaches back into ``a``
                break
            if a.speaker != b.speaker and min(a.end, b.end) > max(a.start, b.start):
                regions.append((max(a.start, b.start), min(a.end, b.end)))
    return regions


def mark_overlaps(turns: list[SpeakerTurn], segments: list[SpeakerSegment], min_seconds: float = 0.05) -> None:
    """Flag each speaker turn that contains overlapped speech (at least ``min_seconds`` of it, so a
    turn merely touching a hand-over is not flagged). Words keep their one best speaker either way."""
    regions = overlapped_regions(sorted(segments, key=lambda s: (s.start, s.end)))
    for turn in turns:
        start, end = turn.timestamp
        turn.overlap = sum(max(0.0, min(end, r_end) - max(start, r_start)) for r_start, r_end in regions) >= min_seconds
