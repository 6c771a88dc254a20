"""Convert a CTranslate2 Whisper model (faster-whisper's format) into a transformers checkpoint.

No library goes this way (CTranslate2 only converts *from* transformers), so the reader of CTranslate2's
``model.bin`` (binary format version 6) and the weight mapping are written here. The mapping is the
inverse of ``ctranslate2.converters.TransformersConverter``'s Whisper loader: fused q/k/v and k/v
projections are split back, the key projection gets no bias, and the output projection stays tied
to the token embeddings.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch

# CTranslate2's DataType enum, in file order.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}

_TIMESTAMP_TOKENS = 1501  # <|0.00|> … <|30.00|> in 0.02 s steps


def read_ct2_model(path: Path) -> dict[str, np.ndarray]:
    """Read every variable of a CTranslate2 ``model.bin`` (aliases resolved)."""
    data = path.read_bytes()
    offset = 0

    def unpack(fmt: str):
        nonlocal offset
        values = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values[0]

    def string() -> str:
        nonlocal offset
        length = unpack("<H")
        text = data[offset : offset + length - 1].decode()
        offset += length
        return text

    version = unpack("<I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported (expected 6)")
    spec = string()
    if spec != "WhisperSpec":
        raise ValueError(f"{path}: model spec {spec!r} is not Whisper")
    unpack("<I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(unpack("<I")):
        name = string()
        shape = [unpack("<I") for _ in range(unpack("<B"))]
        dtype = _CT2_DTYPES[unpack("<B")]
        num_bytes = unpack("<I")
        variables[name] = np.frombuffer(data, dtype=dtype, count=num_bytes // np.dtype(dtype).itemsize, offset=offset).reshape(shape)
        offset += num_bytes
    for _ in range(unpack("<I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} trailing bytes; the file is corrupt")
    return variables


def _linear(state: dict, prefix: str, weight: np.ndarray, bias: np.ndarray | None) -> None:
    state[f"{prefix}.weight"] = torch.from_numpy(np.array(weight))
    if bias is not None:
        state[f"{prefix}.bias"] = torch.from_numpy(np.array(bias))


def _split(array: np.ndarray, parts: int) -> list[np.ndarray]:
    return np.split(array, parts, axis=0)


def _attention(state: dict, hf: str, ct2: dict, ct: str, fused: str) -> None:
    """Map one attention block; ``fused`` is "qkv" (self-attention) or "kv" (cross-attention)."""
    if fused == "qkv":
        weights = _split(ct2[f"{ct}/linear_0/weight"], 3)
        biases = _split(ct2[f"{ct}/linear_0/bias"], 3)
        out = "linear_1"
    else:
        weights = [ct2[f"{ct}/linear_0/weight"], *_split(ct2[f"{ct}/linear_1/weight"], 2)]
        biases = [ct2[f"{ct}/linear_0/bias"], *_split(ct2[f"{ct}/linear_1/bias"], 2)]
        out = "linear_2"
    for name, weight, bias in zip(("q_proj", "k_proj", "v_proj"), weights, biases):
        _linear(state, f"{hf}.{name}", weight, None if name == "k_proj" else bias)
    _linear(state, f"{hf}.out_proj", ct2[f"{ct}/{out}/weight"], ct2[f"{ct}/{out}/bias"])


def _layer_norm(state: dict, hf: str, ct2: dict, ct: str) -> None:
    state[f"{hf}.weight"] = torch.from_numpy(np.array(ct2[f"{ct}/gamma"]))
    state[f"{hf}.bias"] = torch.from_numpy(np.array(ct2[f"{ct}/beta"]))


def num_layers(ct2: dict[str, np.ndarray], side: str) -> int:
    return len({m.group(0) for k in ct2 if (m := re.match(rf"{side}/layer_\d+/", k))})


def convert_state_dict(ct2: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for side in ("encoder", "decoder"):
        for i in range(num_layers(ct2, side)):
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            _attention(state, f"{hf}.self_attn", ct2, f"{ct}/self_attention", "qkv")
            _layer_norm(state, f"{hf}.self_attn_layer_norm", ct2, f"{ct}/self_attention/layer_norm")
            if side == "decoder":
                _attention(state, f"{hf}.encoder_attn", ct2, f"{ct}/attention", "kv")
                _layer_norm(state, f"{hf}.encoder_attn_layer_norm", ct2, f"{ct}/attention/layer_norm")
            _linear(state, f"{hf}.fc1", ct2[f"{ct}/ffn/linear_0/weight"], ct2[f"{ct}/ffn/linear_0/bias"])
            _linear(state, f"{hf}.fc2", ct2[f"{ct}/ffn/linear_1/weight"], ct2[f"{ct}/ffn/linear_1/bias"])
            _layer_norm(state, f"{hf}.final_layer_norm", ct2, f"{ct}/ffn/layer_norm")
        _layer_norm(state, f"model.{side}.layer_norm", ct2, f"{side}/layer_norm")
        state[f"model.{side}.embed_positions.weight"] = torch.from_numpy(np.array(ct2[f"{side}/position_encodings/encodings"]))
    for conv in ("conv1", "conv2"):
        _linear(state, f"model.encoder.{conv}", ct2[f"encoder/{conv}/weight"], ct2[f"encoder/{conv}/bias"])
    state["model.decoder.embed_tokens.weight"] = torch.from_numpy(np.array(ct2["decoder/embeddings/weight"]))
    return state


def convert(ct2_dir: Path, output_dir: Path) -> None:
    """Write a complete transformers Whisper checkpoint (model, tokenizer, feature extractor,
    generation config) converted from the CTranslate2 model in ``ct2_dir``."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    ct2 = read_ct2_model(ct2_dir / "model.bin")
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    vocab_size, d_model = ct2["decoder/embeddings/weight"].shape
    multilingual = vocab_size >= 51865

    tokenizer = WhisperTokenizerFast(tokenizer_file=str(ct2_dir / "tokenizer.json"), bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(_TIMESTAMP_TOKENS)])
    if len(tokenizer) != vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, model {vocab_size}")
    token_id = tokenizer.convert_tokens_to_ids
    eot, sot = token_id("<|endoftext|>"), token_id("<|startoftranscript|>")


    config = WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(ct2["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=num_layers(ct2, "encoder"),
        decoder_layers=num_layers(ct2, "decoder"),
        encoder_attention_heads=int(ct2["encoder/num_heads"]),
        decoder_attention_heads=int(ct2["decoder/num_heads"]),
        encoder_ffn_dim=int(ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(ct2["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(ct2["decoder/position_encodings/encodings"].shape[0]),
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        suppress_tokens=ct2_config["suppress_ids"],
        tie_word_embeddings=True,
        dtype="float16",
    )
    model = WhisperForConditionalGeneration(config).to(torch.float16)
    missing, unexpected = model.load_state_dict(convert_state_dict(ct2), strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise ValueError(f"weight mapping incomplete: missing={missing} unexpected={unexpected}")
    model.tie_weights()

    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer)

    generation = GenerationConfig(
        alignment_heads=ct2_config["alignment_heads"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        suppress_tokens=ct2_config["suppress_ids"],
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        max_length=config.max_target_positions,
        max_initial_timestamp_index=50,  # 1.0 s, as openai-whisper
        no_timestamps_token_id=token_id("<|notimestamps|>"),
        prev_sot_token_id=token_id("<|startofprev|>"),
        is_multilingual=multilingual,
        return_timestamps=False,
    )
    if multilingual:
        generation.lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in ct2_config["lang_ids"]}
        generation.task_to_id = {task: token_id(f"<|{task}|>") for task in ("transcribe", "translate")}
    model.generation_config = generation

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    # transformers 5 keeps the feature extractor inside processor_config.json; 4.x (the Inference
    # Endpoints image) looks only for preprocessor_config.json.
    processor.feature_extractor.save_pretrained(output_dir)
    _write_classic_tokenizer_config(output_dir / "tokenizer_config.json")
    generation.save_pretrained(output_dir)


def _write_classic_tokenizer_config(path: Path) -> None:
    """transformers 5 names the special-token list `extra_special_tokens` and adds a `backend` key,
    which 4.x (the Inference Endpoints image) cannot read; the Hub's checkpoints use the older names,
    which both read."""
    config = json.loads(path.read_text())
    config.pop("backend", None)
    if "extra_special_tokens" in config:
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
