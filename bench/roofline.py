"""How close the default request comes to this CPU's GEMM limit, and where batching stops paying.

    python -m bench.roofline [--sets asr_short,asr_long] [--threads 2] [--batch 8]

1. Runs the default request (CTranslate2 int8, segment timestamps, language detected) over each
   set, one file at a time, counting what the model computes: encoder windows (and their frames),
   decoder tokens (prompts included) and the context each token attends to. CPU seconds of the process.
2. Counts the GEMM FLOPs (a multiply-add is 2) from the checkpoint's dimensions: the linear layers,
   which CTranslate2 runs in int8, apart from the attention products (scores and values), which it
   runs in float32.
3. Measures this CPU's GEMM rates (best of five trials) on the same shapes with the same thread count: int8 with torch's
   dynamically quantized ``Linear`` (fbgemm, activations quantized on the fly as CTranslate2 does) on
   the encoder's MLP shape, float32 with ``torch.bmm`` on the attention-score shape. Also prints the
   AVX-512 VNNI peak from the clock (2 ports x 64 int8 multiply-adds per cycle per core).
4. The ratio: the time those FLOPs would take at the measured rates over the CPU seconds the run took.
5. The encoder's cost per window against the window's width (10, 15, 30 s of log-Mel frames), one
   window per call and four: attention over the window's positions makes it superlinear, which is
   why trimmed windows pay, and batching windows costs more per window on CPU.
6. The batching ceiling: the short set's files decoded as one batch of ``--batch`` requests (what the
   server's micro-batching does with that many concurrent clients) against one at a time, in CPU
   seconds per audio second.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from bench.__main__ import BASE, cpu_model, cpuinfo, load_set  # noqa: E402


@dataclass
class Work:
    """What the model computed: windows (encoder frames each), decoder tokens, token-context sums."""

    frames: list[int] = field(default_factory=list)
    tokens: int = 0  # decoder positions run (prompt and generated)
    self_context: int = 0  # sum over decoder positions of the positions each attends to
    cross_tokens: list[tuple[int, int]] = field(default_factory=list)  # (encoder positions, decoder positions) per generate row


def count_work(transcriber) -> Work:
    """Wrap the engine's encode and generate to record what they compute."""
    work = Work()
    encode, generate = transcriber.encode, transcriber.generate

    def counting_encode(features):
        work.frames += [features.shape[-1]] * features.shape[0]
        return encode(features)

    def counting_generate(encoded, prompts, options, sot_index):
        hypotheses = generate(encoded, prompts, options, sot_index)
        positions = encoded.shape[1]
        for prompt, hypothesis in zip(prompts, hypotheses):
            n = len(prompt) + len(hypothesis.tokens) + (1 if hypothesis.finished else 0)
            work.tokens += n
            work.self_context += n * (n + 1) // 2
            work.cross_tokens.append((positions, n))
        return hypotheses

    transcriber.encode, transcriber.generate = counting_encode, counting_generate
    return work


def gemm_flops(work: Work, config: dict) -> dict[str, float]:
    """int8 (linear layers) and float32 (attention products) FLOPs of the recorded work."""
    d, mels, vocab = config["d_model"], config["num_mel_bins"], config["vocab_size"]
    enc_layers, dec_layers, enc_ffn, dec_ffn = config["encoder_layers"], config["decoder_layers"], config["encoder_ffn_dim"], config["decoder_ffn_dim"]
    linear = attention = 0.0
    for frames in work.frames:
        positions = frames // 2
        linear += 2 * frames * 3 * mels * d + 2 * positions * 3 * d * d  # the two convolutions (as GEMMs)
        linear += enc_layers * (2 * positions * 4 * d * d + 2 * positions * 2 * d * enc_ffn)
        attention += enc_layers * 2 * (2 * positions * positions * d)
    for positions, tokens in work.cross_tokens:
        linear += dec_layers * 2 * positions * 2 * d * d  # cross-attention keys and values, once per window
        attention += dec_layers * 2 * (2 * tokens * positions * d)
    linear += work.tokens * (dec_layers * (2 * 4 * d * d + 2 * 2 * d * d + 2 * 2 * d * dec_ffn) + 2 * d * vocab)
    attention += dec_layers * 2 * (2 * work.self_context * d)
    return {"int8_linear": linear, "float32_attention": attention}


def cpu_rate(run, flops: float, repeats: int, trials: int = 5) -> float:
    """FLOPs per CPU second of ``run``, the best of ``trials``: the rate this CPU can reach (on a
    shared machine single trials came out up to 2x lower)."""
    run()  # warm-up
    rates = []
    for _ in range(trials):
        started = time.process_time()
        for _ in range(repeats):
            run()
        rates.append(flops * repeats / (time.process_time() - started))
    return max(rates)


def measured_rates(config: dict, threads: int) -> dict[str, float]:
    """FLOPs per CPU second of int8 and float32 GEMMs on the model's shapes, ``threads`` threads."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    torch.set_num_threads(threads)
    d, ffn, positions, heads = config["d_model"], config["encoder_ffn_dim"], config["max_source_positions"], config["encoder_attention_heads"]
    torch.backends.quantized.engine = "fbgemm"
    layer = DynamicInt8Linear(d, ffn, dtype=torch.qint8)
    x = torch.randn(positions, d)
    q, k = torch.randn(heads, positions, d // heads), torch.randn(heads, d // heads, positions)
    with torch.inference_mode():
        int8 = cpu_rate(lambda: layer(x), 2 * positions * d * ffn, 50)
        float32 = cpu_rate(lambda: torch.bmm(q, k), 2 * positions * positions * d, 20)
    return {"int8": int8, "float32": float32}


def encoder_cost_by_width(encode, n_mels: int, widths: tuple[int, ...] = (1000, 1500, 3000), batch: int = 1, repeats: int = 3) -> dict[int, float]:
    """CPU seconds per encoder window, by width in log-Mel frames, ``batch`` windows per call
    (random features: the cost does not depend on the content)."""
    import numpy as np

    features = np.random.default_rng(0).standard_normal((batch, n_mels, max(widths))).astype(np.float32)
    costs = {}
    for width in widths:
        windows = np.ascontiguousarray(features[..., :width])
        encode(windows)  # warm-up
        started = time.process_time()
        for _ in range(repeats):
            encode(windows)
        costs[width] = (time.process_time() - started) / repeats / batch
    return costs


def vnni_peak() -> float | None:
    """AVX-512 VNNI int8 peak per core from the clock /proc/cpuinfo reports: 2 FMA ports x 64
    multiply-adds per cycle."""
    text = cpuinfo()
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", text)
    return float(mhz.group(1)) * 1e6 * 2 * 64 * 2 if mhz and "avx512_vnni" in text else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="asr_short,asr_long", help="'' for the GEMM rates and encoder costs only")
    parser.add_argument("--threads", type=int, default=2, help="CTranslate2 and torch threads")
    parser.add_argument("--batch", type=int, default=8, help="requests per batch for the batching ceiling")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from asr import build_transcriber
    from asr.engine import Request
    from config import InferenceConfig, ModelSettings

    config = json.loads((BASE / "config.json").read_text())
    transcriber = build_transcriber(ModelSettings(_env_file=None, asr_model=str(BASE), asr_backend="ctranslate2", compute_type="int8", cpu_threads=args.threads, diarization_model=None, assistant_model=None), REPO_DIR)
    request = InferenceConfig()  # the default request
    rates = measured_rates(config, args.threads)
    cpu = cpu_model()
    report: dict = {"cpu": cpu, "threads": args.threads, "int8_gemm_flops_per_cpu_s": rates["int8"], "float32_gemm_flops_per_cpu_s": rates["float32"], "vnni_peak_flops_per_core_s": vnni_peak(), "sets": {}}
    print(f"{cpu}, {args.threads} threads: measured int8 GEMM {rates['int8'] / 1e9:.0f} GFLOP per CPU s, float32 {rates['float32'] / 1e9:.0f}; VNNI peak {(report['vnni_peak_flops_per_core_s'] or 0) / 1e9:.0f} GFLOP/s per core")

    # CTranslate2's own encode: the engine's wrapper encodes a batch one window at a time on CPU.
    report["encoder_cpu_s_per_window"] = {}
    for batch in (1, 4):
        widths = encoder_cost_by_width(transcriber.model.encode, transcriber.n_mels, batch=batch)
        report["encoder_cpu_s_per_window"][f"batch {batch}"] = {f"{frames // 100} s": cost for frames, cost in widths.items()}
        print(f"encoder CPU s per window, batches of {batch}: " + ", ".join(f"{frames // 100} s {cost:.3f}" for frames, cost in widths.items()))

    from asr.pipeline import speech_chunks

    for name in filter(None, args.sets.split(",")):
        rows = load_set(name)
        transcriber.transcribe(rows[0]["samples"][: 16000 * 5], request)  # warm-up
        work = count_work(transcriber)
        started = time.process_time()
        for row in rows:
            transcriber.transcribe(row["samples"], request)
        cpu_s = time.process_time() - started
        del transcriber.encode, transcriber.generate  # back to the class's methods
        audio = sum(len(row["samples"]) for row in rows) / 16000
        flops = gemm_flops(work, config)
        ideal = flops["int8_linear"] / rates["int8"] + flops["float32_attention"] / rates["float32"]
        # Windows beyond the speech chunks are seek-on remainders: the model stopped at a timestamp
        # before the chunk's end and the rest was decoded again in a window of its own.
        chunks = sum(len(speech_chunks(row["samples"], request.chunk_length_s)[1]) for row in rows)
        entry = {"audio_s": audio, "cpu_s": cpu_s, "windows": len(work.frames), "speech_chunks": chunks, "decoder_positions": work.tokens, **{f"{k}_flops_per_audio_s": v / audio for k, v in flops.items()}, "cpu_s_at_measured_gemm_rates": ideal, "gemm_time_share": ideal / cpu_s}
        if name == "asr_short":
            batch = rows[: args.batch]
            batch_audio = sum(len(row["samples"]) for row in batch) / 16000
            started = time.process_time()
            for row in batch:
                transcriber.transcribe(row["samples"], request)
            one_by_one = time.process_time() - started
            started = time.process_time()
            transcriber.transcribe_batch([Request(row["samples"], request) for row in batch])
            batched = time.process_time() - started
            entry["ceiling"] = {"files": len(batch), "audio_s": batch_audio, "cpu_s_per_audio_s_one_by_one": one_by_one / batch_audio, "cpu_s_per_audio_s_batched": batched / batch_audio}
        report["sets"][name] = entry
        print(f"{name}: {audio:.0f} s of audio, {cpu_s:.1f} CPU s, {len(work.frames)} encoder windows for {chunks} speech chunks, {work.tokens} decoder positions; "
              f"GEMM FLOPs per audio s: int8 {flops['int8_linear'] / audio / 1e9:.1f} G, float32 attention {flops['float32_attention'] / audio / 1e9:.1f} G; "
              f"at the measured GEMM rates {ideal:.1f} CPU s: {100 * ideal / cpu_s:.0f} % of the run")
        if "ceiling" in entry:
            c = entry["ceiling"]
            print(f"  batching ceiling ({c['files']} files, {c['audio_s']:.0f} s): {c['cpu_s_per_audio_s_one_by_one']:.3f} CPU s per audio s one at a time, {c['cpu_s_per_audio_s_batched']:.3f} in one batch")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
