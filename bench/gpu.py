"""GPU benchmark: our decoding pipeline vs the blog handler's pipeline call, on large-v3-shaped Whisper.

No hub weights are reachable offline, so the models have large-v3's shapes (32+32 layers, d_model
1280, 128 mel bins) and random weights, plus a distil-large-v3-shaped draft (the same encoder, two
decoder layers). Random weights decode nonsense of arbitrary length: every window is made to decode
exactly ``--tokens`` tokens (end-of-text suppressed until then, no temperature fallback), so both
systems do the same decoder work and the figures compare the machinery — batching, SDPA, fp16,
encoder/decoder cost — not the text. The draft is random too: its tokens are almost never accepted,
so the assisted row measures speculative decoding's overhead, not its gain with a trained draft.

    python -m bench.gpu [--minutes 10] [--batch-size 24] [--tokens 100] [--output bench/results-gpu.json]
    python -m bench.gpu --tiny --device cpu --minutes 1     # the same code with tiny shapes (tests)

Prints audio minutes per second of wall time and peak GPU memory per system.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from bench.__main__ import BASE, load_set  # noqa: E402

LARGE_V3 = dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20, decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128)
TINY = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=128)
DRAFT_DECODER_LAYERS = 2  # distil-large-v3


def build_models(directory: Path, shapes: dict, dtype: torch.dtype) -> tuple[Path, Path]:
    """Random-weight main and draft checkpoints with Whisper base's tokenizer and generation config."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig.from_pretrained(BASE)
    for key, value in shapes.items():
        setattr(config, key, value)
    paths = []
    for name, decoder_layers in (("main", config.decoder_layers), ("draft", DRAFT_DECODER_LAYERS)):
        config.decoder_layers = decoder_layers
        model = WhisperForConditionalGeneration(config).to(dtype)
        path = directory / name
        model.save_pretrained(path)
        for file in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(BASE / file, path / file)
        WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(path)
        paths.append(path)
        del model
    return paths[0], paths[1]


def fixed_length(model, tokens: int) -> None:
    """Every window decodes exactly ``tokens`` tokens: end-of-text is suppressed until then."""
    model.generation_config.min_new_tokens = tokens


def ours(main: Path, draft: Path | None, device: str, batch_size: int, tokens: int):
    from asr import pipeline
    from asr.transformers_engine import WhisperTranscriber
    from config import InferenceConfig, ModelSettings

    settings = ModelSettings(_env_file=None, asr_model=str(main), assistant_model=str(draft) if draft else None, asr_backend="transformers", device=device)
    transcriber = WhisperTranscriber(settings, REPO_DIR)
    fixed_length(transcriber.model, tokens)
    pipeline.FALLBACK_TEMPERATURES = (0.0,)  # nonsense text must not be retried at other temperatures
    pipeline.token_budget = lambda duration: tokens
    config = InferenceConfig(language="en", batch_size=batch_size, num_beams=1, assisted=draft is not None)
    return lambda samples: transcriber.transcribe(samples, config)


def blog(main: Path, device: str, batch_size: int, tokens: int):
    from transformers import pipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    asr = pipeline("automatic-speech-recognition", model=str(main), dtype=dtype, device=device)
    fixed_length(asr.model, tokens)

    def run(samples: np.ndarray):
        with torch.inference_mode():
            return asr(samples.copy(), chunk_length_s=30, batch_size=batch_size, return_timestamps=True, generate_kwargs={"language": "en", "task": "transcribe", "max_new_tokens": tokens})

    return run


def audio(minutes: float) -> np.ndarray:
    """Real speech (the dev sets, end to end, repeated) so that the VAD finds speech windows."""
    pieces = [row["samples"] for name in ("asr_long", "asr_short") for row in load_set(name)]
    speech = np.concatenate(pieces)
    repeats = int(np.ceil(minutes * 60 * 16000 / len(speech)))
    return np.tile(speech, repeats)[: int(minutes * 60 * 16000)]


def measure(name: str, factory, samples: np.ndarray, device: str) -> dict:
    transcribe = factory()
    transcribe(samples[: 16000 * 30])  # warm-up: kernels, allocator
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    transcribe(samples)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result = {"system": name, "wall_s": round(seconds, 2), "audio_min_per_s": round(len(samples) / 16000 / 60 / seconds, 3)}
    if device.startswith("cuda"):
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    del transcribe
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=100, help="tokens decoded per 30 s window")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU check of the code path)")
    parser.add_argument("--systems", default="ours,blog,ours-assisted")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    samples = audio(args.minutes)
    results = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", "shapes": "tiny" if args.tiny else "large-v3",
               "dtype": str(dtype).removeprefix("torch."), "attention": "sdpa", "batch_size": args.batch_size, "tokens_per_window": args.tokens,
               "audio_min": round(len(samples) / 16000 / 60, 2), "systems": []}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as directory:
        main_model, draft = build_models(Path(directory), TINY if args.tiny else LARGE_V3, dtype)
        factories = {
            "ours": lambda: ours(main_model, None, args.device, args.batch_size, args.tokens),
            "blog": lambda: blog(main_model, args.device, args.batch_size, args.tokens),
            "ours-assisted": lambda: ours(main_model, draft, args.device, args.batch_size, args.tokens),
        }
        for name in args.systems.split(","):
            result = measure(name, factories[name], samples, args.device)
            results["systems"].append(result)
            print(json.dumps(result), flush=True)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
