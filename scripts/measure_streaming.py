"""The streaming acceptance figures against a running server (``make serve``): the official openai
SDK streams the 2.7-min ``asr_long`` sonnets file and the plain request is timed beside it, then the
2-speaker call is asked for as ``diarized_json``.

    python scripts/measure_streaming.py --base-url http://127.0.0.1:8000/v1 [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import openai
from openai.types.audio import TranscriptionDiarized

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.data import data_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--data", type=Path, default=data_dir())
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, timeout=900, max_retries=0)
    sonnets = (args.data / "asr_long" / "librivox_shakespeare_sonnets_1-3.wav").read_bytes()
    call = (args.data / "diarization" / "audio" / "pyannote_sample.wav").read_bytes()
    results = []
    for round_number in range(args.rounds):
        started = time.perf_counter()
        plain = client.audio.transcriptions.create(model="whisper-1", file=("sonnets.wav", sonnets), language="en")
        plain_s = time.perf_counter() - started
        started = time.perf_counter()
        first_delta_s, deltas, done = None, [], None
        for event in client.audio.transcriptions.create(model="whisper-1", file=("sonnets.wav", sonnets), language="en", stream=True):
            if event.type == "transcript.text.delta":
                if first_delta_s is None:
                    first_delta_s = time.perf_counter() - started
                deltas.append(event.delta)
            elif event.type == "transcript.text.done":
                done = event
        stream_s = time.perf_counter() - started
        results.append({"round": round_number, "plain_s": round(plain_s, 2), "stream_first_delta_s": round(first_delta_s, 2), "stream_total_s": round(stream_s, 2),
                        "deltas": len(deltas), "first_delta_over_plain": round(first_delta_s / plain_s, 3),
                        "deltas_equal_done": "".join(deltas) == done.text, "done_equals_plain": done.text == plain.text, "usage": done.usage.to_dict() if done.usage else None})
        print(json.dumps(results[-1]), flush=True)
    started = time.perf_counter()
    diarized = client.audio.transcriptions.create(model="whisper-1", file=("call.wav", call), language="en", response_format="diarized_json")
    print(json.dumps({"diarized_json_s": round(time.perf_counter() - started, 2), "is_TranscriptionDiarized": isinstance(diarized, TranscriptionDiarized),
                      "speakers": sorted({s.speaker for s in diarized.segments}), "segments": len(diarized.segments)}), flush=True)


if __name__ == "__main__":
    main()
