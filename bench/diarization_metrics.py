"""Print the diarization figures: per-item DER, speaker counts, CPU real-time factor, and the
speaker-attributed WER (cpWER) of the whole system on the 2-speaker call, by merge strategy.

    python bench/diarization_metrics.py [--threads 1] [--skip-asr]

Each item is diarized as the endpoint diarizes it (``handler.Handler``): ``diarization.speech_detection.detect_speech`` finds
the speech regions (Silero, the handler's arguments), ``diarization_speech`` adds what the pipeline's
segmentation model hears, ``diarization.blocks.diarize_speech`` diarizes
only those (joined, through ``Diarizer.diarize``) and maps the turns back to the file's timeline.

DER: pyannote.metrics, overlap scored, collar 0 and 0.25 s, inside each item's UEM (whole file
otherwise). cpWER: meeteval, both sides normalized with Whisper's English normalizer, against
``pyannote_sample.stm`` and the 3-speaker clip's speaker-tagged words. Merges compared on the same ASR output and the same diarization:
word (ours: each word to the speaker it overlaps most), chunk (each ASR segment to the speaker it
overlaps most) and blog (the HF blog handler's: each speaker turn takes every chunk up to the one
whose end is nearest the turn's end).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_DIR), str(REPO_DIR / "scripts")]
from bench.data import data_dir  # noqa: E402


class StageTimer:
    """CPU time of the pipeline's stages, from pyannote's hook calls (each marks a stage's end)."""

    STAGES = {"segmentation": "segmentation", "speaker_counting": "segmentation", "embeddings": "embedding", "discrete_diarization": "clustering, reconstruction, reassignment"}

    def __init__(self) -> None:
        self.totals = {"speech detection": 0.0, **{name: 0.0 for name in dict.fromkeys(self.STAGES.values())}, "output": 0.0}

    def start(self):
        self.last = time.process_time()

        def hook(step: str, *args, **kwargs) -> None:
            now = time.process_time()
            if step in self.STAGES:
                self.totals[self.STAGES[step]] += now - self.last
                self.last = now

        return hook

    def stop(self) -> None:
        self.totals["output"] += time.process_time() - self.last


class TimedPipeline:
    """The diarization pipeline, called exactly as ``Diarizer.diarize`` calls it, with ``timer``'s
    hook timing its stages (everything else is passed through)."""

    def __init__(self, pipeline, timer: StageTimer) -> None:
        self.pipeline, self.timer = pipeline, timer

    def __call__(self, file, hook=None, **kwargs):
        timing = self.timer.start()

        def timed_hook(*args, **hook_kwargs) -> None:  # the caller's own hook (memory release) still runs
            timing(*args, **hook_kwargs)
            if hook is not None:
                hook(*args, **hook_kwargs)

        try:
            return self.pipeline(file, hook=timed_hook, **kwargs)
        finally:
            self.timer.stop()

    def __getattr__(self, name: str):
        return getattr(self.pipeline, name)


def segmentation_alone(pipeline, item) -> "Annotation":
    """The speech the pipeline's segmentation model alone hears in the whole item, with as many
    (anonymous) speakers per frame as its speaker count says: scored, its miss and false alarm are
    what the segmentation allows (its confusion means nothing)."""
    import torch
    from pyannote.audio.utils.signal import Binarize
    from pyannote.core import SlidingWindowFeature

    counts: list[SlidingWindowFeature] = []

    def keep_count(step: str, artifact, **kwargs) -> None:
        if step == "speaker_counting":  # copied: the pipeline changes it in place afterwards
            counts.append(SlidingWindowFeature(np.array(artifact.data, copy=True), artifact.sliding_window))

    with torch.inference_mode():
        pipeline(item.file(), hook=keep_count)
    count = np.nan_to_num(counts[0].data).reshape(-1)
    layers = np.stack([count > k for k in range(max(1, int(count.max())))], axis=1).astype(np.float32)
    return Binarize(onset=0.5, offset=0.5)(SlidingWindowFeature(layers, counts[0].sliding_window))


def speech_detection_errors(item, regions) -> tuple[float, float]:
    """Missed speech and false alarm of speech ``regions`` ((start, end) seconds) against the
    reference's speech (anyone speaking), as shares of the reference speech (pyannote.metrics'
    detection error rate, inside the item's UEM)."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.detection import DetectionErrorRate

    hypothesis = Annotation(uri=item.id)
    for index, (start, end) in enumerate(regions):
        hypothesis[Segment(start, end), index] = "speech"
    uem = item.uem or Timeline([Segment(0.0, item.samples.shape[-1] / 16000)])
    components = DetectionErrorRate(collar=0.0, skip_overlap=False)(item.reference, hypothesis, uem=uem, detailed=True)
    total = components["total"]
    return (components["miss"] / total, components["false alarm"] / total) if total else (float("nan"), float("nan"))


def stock_speech_activity(pipeline):
    """pyannote's ``VoiceActivityDetection`` over the pipeline's segmentation checkpoint with
    pyannote's own defaults (windows every tenth of their length, no region filtering)."""
    from pyannote.audio.pipelines import VoiceActivityDetection

    from diarization_utils import segmentation_checkpoint

    detector = VoiceActivityDetection(segmentation=segmentation_checkpoint(pipeline)).instantiate({"min_duration_on": 0.0, "min_duration_off": 0.0})
    return lambda item: [(s.start, s.end) for s in detector(item.file()).get_timeline().support()]


def blog_merge(chunks, turns) -> list[tuple[str, str]]:
    """The HF blog handler's chunk-level merge, as (speaker, text) turns."""
    merged = []  # consecutive turns of one speaker first become one segment
    for turn in turns:
        if merged and merged[-1][0] == turn.speaker:
            merged[-1] = (turn.speaker, merged[-1][1], turn.end)
        else:
            merged.append((turn.speaker, turn.start, turn.end))
    remaining = list(chunks)
    output = []
    for speaker, _, end in merged:
        if not remaining:
            break
        upto = int(np.argmin([abs(c.timestamp[1] - end) for c in remaining]))
        output.append((speaker, " ".join(c.text for c in remaining[: upto + 1])))
        remaining = remaining[upto + 1 :]
    return output


def speaker_references(data_dir: Path) -> dict[str, dict[str, str]]:
    """Speaker-attributed references: the 2-speaker call's STM and the 3-speaker clip's tagged words."""
    folder = data_dir / "diarization"
    call: dict[str, str] = {}
    for line in (folder / "pyannote_sample.stm").read_text().splitlines():
        _, _, speaker, _, _, text = line.split(" ", 5)
        call[speaker] = f"{call.get(speaker, '')} {text}"
    clip: dict[str, str] = {}
    for word in json.loads((folder / "picovoice_diarization_test.words.json").read_text()):
        clip[str(word["speaker_tag"])] = f"{clip.get(str(word['speaker_tag']), '')} {word['word']}"
    return {"pyannote_sample": call, "picovoice_diarization_test": clip}


def cpwer(reference: dict[str, str], turns: list[tuple[str, str]]):
    from meeteval.wer.wer.cp import cp_word_error_rate

    from eval_client.metrics import normalize

    hypothesis: dict[str, str] = {}
    for speaker, text in turns:
        hypothesis[speaker] = f"{hypothesis.get(speaker, '')} {text}"
    return cp_word_error_rate({k: normalize(v) for k, v in reference.items()}, {k: normalize(v) for k, v in hypothesis.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=data_dir())
    parser.add_argument("--pipeline", default=str(REPO_DIR / "models" / "pyannote-diarization"))
    parser.add_argument("--asr-model", default=str(REPO_DIR / "models" / "whisper-base"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--skip-asr", action="store_true", help="diarization figures only")
    args = parser.parse_args()

    import torch

    from config import InferenceConfig, ModelSettings
    from diarization.blocks import diarize_speech
    from diarization.speech_detection import detect_speech, diarization_speech
    from diarization_utils import Diarizer, merge_speakers
    from tune_diarization import as_hypothesis, der, dev_items

    torch.set_num_threads(args.threads)
    settings = ModelSettings(_env_file=None, asr_model=args.asr_model, diarization_model=args.pipeline, device="cpu")
    loaded = Diarizer.load(settings, REPO_DIR)
    stage_seconds = StageTimer()
    diarizer = Diarizer(TimedPipeline(loaded.pipeline, stage_seconds), loaded.name)

    def speaker_turns(samples: np.ndarray) -> list:
        """What the handler runs for a diarized request without speaker constraints."""
        return diarize_speech(diarizer, samples, diarization_speech(diarizer, samples, detect_speech(samples)))

    items = dev_items(args.data_dir)
    speaker_turns(items[0].samples[0].numpy())  # warm-up, not timed
    stage_seconds.__init__()

    print(f"pipeline {args.pipeline}: {loaded.pipeline.parameters(instantiated=True)}; torch threads {args.threads}")
    stock_speech = stock_speech_activity(loaded.pipeline)
    print(f"{'item':30} {'dur s':>6} {'speech':>6} {'ref spk':>7} {'hyp spk':>7} {'DER c0':>7} {'DER c.25':>8} {'miss':>6} {'FA':>6} {'conf':>6} {'wall s':>7} {'cpu s':>6} {'seg miss':>8} {'seg FA':>6} | {'SAD miss/FA: silero':>19} {'ours':>11} {'pyannote':>11}")
    audio_seconds = wall_seconds = cpu_seconds = 0.0
    totals = {0.0: [0.0, 0.0], 0.25: [0.0, 0.0]}
    counted = 0
    for item in items:
        samples = item.samples[0].numpy()
        wall, cpu = time.perf_counter(), time.process_time()
        regions = diarization_speech(diarizer, samples, detect_speech(samples))  # as handler.Handler
        stage_seconds.totals["speech detection"] += time.process_time() - cpu
        turns = diarize_speech(diarizer, samples, regions)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        duration = len(samples) / 16000
        audio_seconds, wall_seconds, cpu_seconds = audio_seconds + duration, wall_seconds + wall, cpu_seconds + cpu
        hypothesis = as_hypothesis(item.id, turns)
        rates = {}
        for collar in totals:
            rates[collar], components = der(item, hypothesis, collar)
            totals[collar][0] += components["false alarm"] + components["missed detection"] + components["confusion"]
            totals[collar][1] += components["total"]
        _, c0 = der(item, hypothesis, 0.0)
        shares = [c0[k] / c0["total"] if c0["total"] else float("nan") for k in ("missed detection", "false alarm", "confusion")]
        counted += len(item.reference.labels()) > 0 and len(item.reference.labels()) == len(hypothesis.labels())
        speech = sum(r.end - r.start for r in regions)
        _, alone = der(item, segmentation_alone(loaded.pipeline, item), 0.0)
        alone_shares = [alone[k] / alone["total"] if alone["total"] else float("nan") for k in ("missed detection", "false alarm")]
        detection = [speech_detection_errors(item, spans) for spans in ([tuple(r) for r in detect_speech(samples)], [tuple(r) for r in regions], stock_speech(item))]
        print(f"{item.id:30} {duration:6.1f} {speech:6.1f} {len(item.reference.labels()):7d} {len(hypothesis.labels()):7d} {rates[0.0]:7.3f} {rates[0.25]:8.3f} {shares[0]:6.3f} {shares[1]:6.3f} {shares[2]:6.3f} {wall:7.2f} {cpu:6.2f} {alone_shares[0]:8.3f} {alone_shares[1]:6.3f} | " + " ".join(f"{m:5.3f}/{f:5.3f}" for m, f in detection))
    print(f"{'aggregate (all items)':30} {audio_seconds:6.1f} {'':6} {'':7} {'':7} {totals[0.0][0] / totals[0.0][1]:7.3f} {totals[0.25][0] / totals[0.25][1]:8.3f}")
    with_reference = sum(1 for item in items if item.reference.labels())
    print(f"right speaker count on {counted} of {with_reference} items with speakers")
    print("seg miss / seg FA: DER components of the segmentation model alone (the pipeline's speaker counts per frame over the whole item)")
    print("SAD miss/FA (speech activity, anyone speaking; shares of the reference speech): Silero's regions (before), the speech handed to diarization (ours), pyannote's VoiceActivityDetection with its defaults over the whole item")
    print(f"diarization speed (speech detection included): {60 * wall_seconds / audio_seconds:.2f} s wall and {60 * cpu_seconds / audio_seconds:.2f} s CPU per minute of audio (RTF {wall_seconds / audio_seconds:.3f})")
    print("  CPU per minute of audio by stage: " + ", ".join(f"{name} {60 * seconds / audio_seconds:.2f} s" for name, seconds in stage_seconds.totals.items()))
    other = cpu_seconds - sum(stage_seconds.totals.values())
    print(f"  (the rest, joining speech and mapping turns back: {60 * other / audio_seconds:.2f} s)")

    from audio import load_audio

    pico = load_audio((args.data_dir / "diarization" / "audio" / "picovoice_diarization_test.wav").read_bytes()).samples
    print(f"picovoice_diarization_test (3 speakers, no RTTM): {len({t.speaker for t in speaker_turns(pico)})} speakers found")

    if args.skip_asr:
        return
    from asr.transformers_engine import WhisperTranscriber

    transcriber = WhisperTranscriber(settings, REPO_DIR)
    for item_id, reference in speaker_references(args.data_dir).items():
        samples = load_audio((args.data_dir / "diarization" / "audio" / f"{item_id}.wav").read_bytes()).samples
        turns = speaker_turns(samples)
        transcript = transcriber.transcribe(samples, InferenceConfig(language="en"), want_words=True)
        word_turns, _, _ = merge_speakers(transcript, turns)
        chunk_turns, _, _ = merge_speakers(transcript.model_copy(update={"words": None}), turns)
        print(f"cpWER on {item_id} ({Path(args.asr_model).name}, {len(reference)} reference speakers, {len({t.speaker for t in turns})} found, {len(transcript.chunks)} ASR chunks, {len(transcript.words or [])} words):")
        for name, merged in (
            ("word-level merge (ours)", [(t.speaker, t.text) for t in word_turns]),
            ("chunk-level merge", [(t.speaker, t.text) for t in chunk_turns]),
            ("blog chunk-level merge", blog_merge(transcript.chunks, turns)),
            ("no diarization", [("all", transcript.text)]),
        ):
            result = cpwer(reference, merged)
            print(f"  {name:24} cpWER {result.error_rate:.3f} ({result.errors} errors / {result.length} words; ins {result.insertions} del {result.deletions} sub {result.substitutions})")


if __name__ == "__main__":
    main()
