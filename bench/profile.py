"""Where a system's CPU seconds go, per stage: VAD, log-Mel features, encoder, language detection,
decoder (``generate``), word alignment, the rest (Python: splitting, fallback checks, shaping).

    python -m bench.profile [--systems ours-ct2-int8,fw-int8-batched8] [--sets asr_short,asr_long]

cProfile with a process-CPU-time clock (all threads of the process, so CTranslate2's own threads
count), run on the thread that decodes (our CTranslate2 engine decodes on a thread of its own).
Stages are the cumulative time of the functions that do them; ``encode`` / ``generate`` /
``detect_language`` / ``align`` are CTranslate2's. Profiling adds a little Python overhead to
"other"; compare systems within one run.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from bench.__main__ import SYSTEMS, load_set  # noqa: E402

# (stage, predicate on pstats' (file, line, function) key); the first match names a function's stage.
STAGES: list[tuple[str, Callable[[tuple[str, int, str]], bool]]] = [
    ("vad", lambda key: key[2] == "get_speech_timestamps"),
    ("features", lambda key: key[2] == "__call__" and key[0].endswith("feature_extractor.py")),
    ("encoder", lambda key: key[2] == "<built-in method ctranslate2._ext.encode>"),
    ("language", lambda key: key[2] == "<built-in method ctranslate2._ext.detect_language>"),
    ("decoder", lambda key: key[2] == "<built-in method ctranslate2._ext.generate>"),
    ("align", lambda key: key[2] == "<built-in method ctranslate2._ext.align>"),
]


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative CPU seconds per stage (stages do not nest), the remainder as ``other``."""
    raw = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    out = {name: 0.0 for name, _ in STAGES}
    for key, (_, _, _, cumulative, _) in raw.items():
        for name, matches in STAGES:
            if matches(key):
                out[name] += cumulative
                break
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
