"""Where a system's CPU seconds go, per stage: VAD, log-Mel features, encoder, language detection,
decoder (``generate``), word alignment, the rest (Python: splitting, fallback checks, shaping).

    python -m bench.stage_profile [--systems ours-ct2-int8,fw-int8-batched8] [--sets asr_short,asr_long]

cProfile with a process-CPU-time clock (all threads of the process, so CTranslate2's own threads
count), run on the thread that decodes (our CTranslate2 engine decodes on a thread of its own).
Stages are the cumulative time of the functions that do them; ``encode`` / ``generate`` /
``detect_language`` / ``align`` are CTranslate2's (through our engine's wrappers for our systems).
Profiling adds a little Python overhead to "other"; compare systems within one run.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from bench.__main__ import SYSTEMS, load_set  # noqa: E402

# (stage, CTranslate2 method): the model's stages are its encode / detect_language / generate / align.
MODEL_STAGES = {"encoder": "encode", "language": "detect_language", "decoder": "generate", "align": "align"}
# Our engine calls them through thin wrappers in asr/ctranslate2_engine.py; cProfile does not always
# see the C method itself (ours calls Whisper.generate and it is not recorded), so for our engine
# the wrapper's cumulative time is the stage, and for other systems the C method's.
OUR_ENGINE = "ctranslate2_engine.py"


def stage_of(key: tuple[str, int, str], ours: bool) -> str | None:
    file, _, function = key
    if function == "get_speech_timestamps":
        return "vad"
    if function == "__call__" and file.endswith("feature_extractor.py"):
        return "features"
    for stage, method in MODEL_STAGES.items():
        if (ours and file.endswith(OUR_ENGINE) and function == method) or (not ours and function == f"<built-in method ctranslate2._ext.{method}>"):
            return stage
    return None


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative CPU seconds per stage (stages do not nest), the remainder as ``other``."""
    raw = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    ours = any(key[0].endswith(OUR_ENGINE) for key in raw)
    out = {name: 0.0 for name in ("vad", "features", *MODEL_STAGES)}
    for key, (_, _, _, cumulative, _) in raw.items():
        stage = stage_of(key, ours)
        if stage:
            out[stage] += cumulative
    out["other"] = total - sum(out.values())
    out["total"] = total
    return {name: round(value, 2) for name, value in out.items()}


def profile_system(name: str, sets: dict[str, list[dict]]) -> dict:
    transcribe = SYSTEMS[name]()
    transcribe(next(iter(sets.values()))[0]["samples"][: 16000 * 5])  # warm-up
    # Our CTranslate2 engine decodes on its own long-lived thread: profile there.
    from asr.ctranslate2_engine import CTranslate2Transcriber

    executor = next((cell.cell_contents._thread for cell in (transcribe.__closure__ or ()) if isinstance(cell.cell_contents, CTranslate2Transcriber)), None)
    result: dict = {"system": name}
    for set_name, rows in sets.items():
        profiler = cProfile.Profile(time.process_time)
        # cProfile sees only the thread it is enabled on.
        executor.submit(profiler.enable).result() if executor else profiler.enable()
        for row in rows:
            transcribe(row["samples"])
        executor.submit(profiler.disable).result() if executor else profiler.disable()
        result[set_name] = stage_seconds(pstats.Stats(profiler)) | {"audio_s": round(sum(len(r["samples"]) for r in rows) / 16000, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="ours-ct2-int8,fw-int8-batched8")
    parser.add_argument("--sets", default="asr_short,asr_long")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    sets = {name: load_set(name) for name in args.sets.split(",")}
    results = [profile_system(name, sets) for name in args.systems.split(",")]
    for result in results:
        for set_name in sets:
            print(result["system"], set_name, json.dumps(result[set_name]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
