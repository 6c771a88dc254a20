"""Raw text (punctuation and case, not normalized) of the dev short clips, three ways:
our default request on the transformers engine at fp32, the same on CTranslate2 at float32 and int8,
and stock transformers ``generate`` (language given, timestamps on) on the same checkpoint.

    python scripts/compare_raw_text.py [--out reports/raw_text.json]

Prints per clip whether each pair agrees, and the differing texts; docs/decoding.md records the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

import torch  # noqa: E402
from transformers import WhisperForConditionalGeneration, WhisperProcessor  # noqa: E402

from audio import load_audio  # noqa: E402
from compat import dtype_argument  # noqa: E402
from bench.data import manifest_rows  # noqa: E402
from config import InferenceConfig, ModelSettings  # noqa: E402
from handler import EndpointHandler  # noqa: E402

MODEL = REPO_DIR / "models" / "whisper-base"


def ours(backend: str, compute_type: str, clips: list[bytes]) -> list[str]:
    settings = ModelSettings(_env_file=None, asr_model=str(MODEL), asr_backend=backend, compute_type=compute_type, dtype="float32", diarization_model=None, assistant_model=None)
    handler = EndpointHandler(str(REPO_DIR), settings=settings)
    return [handler.transcribe(clip, InferenceConfig()).text for clip in clips]


def stock_generate(samples: list) -> list[str]:
    processor = WhisperProcessor.from_pretrained(MODEL)
    model = WhisperForConditionalGeneration.from_pretrained(MODEL, **dtype_argument(torch.float32)).eval()
    texts = []
    for audio in samples:
        features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            tokens = model.generate(features, language="en", task="transcribe", return_timestamps=True)
        texts.append(processor.batch_decode(tokens, skip_special_tokens=True)[0].strip())
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [row for row in manifest_rows("asr_short") if row.get("text")]
    clips = [Path(row["audio"]).read_bytes() for row in rows]
    results = {
        "transformers-fp32": ours("transformers", "int8", clips),
        "ct2-float32": ours("ctranslate2", "float32", clips),
        "ct2-int8": ours("ctranslate2", "int8", clips),
    }
    one_window = [i for i, row in enumerate(rows) if row["duration"] <= 30]
    stock = stock_generate([load_audio(clips[i], 16000, 1e9).samples for i in one_window])
    results["stock-generate"] = [None] * len(rows)
    for i, text in zip(one_window, stock):
        results["stock-generate"][i] = text
    pairs = [("transformers-fp32", "ct2-float32"), ("transformers-fp32", "stock-generate"), ("ct2-int8", "transformers-fp32")]
    summary = {}
    for a, b in pairs:
        compared = [i for i in range(len(rows)) if results[a][i] is not None and results[b][i] is not None]
        differ = [i for i in compared if results[a][i] != results[b][i]]
        summary[f"{a} vs {b}"] = {"agree": len(compared) - len(differ), "of": len(compared)}
        print(f"{a} vs {b}: {len(compared) - len(differ)} of {len(compared)} identical")
        for i in differ:
            print(f"  {rows[i]['id']}:\n    {a}: {results[a][i]!r}\n    {b}: {results[b][i]!r}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "clips": [{"id": row["id"], **{k: v[i] for k, v in results.items()}} for i, row in enumerate(rows)]}, indent=1))


if __name__ == "__main__":
    main()
