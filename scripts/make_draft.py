"""Cut a distil-whisper-shaped draft (assistant) model out of a Whisper checkpoint, for speculative
decoding where no distil-whisper weights can be downloaded (tests, the benchmark).

distil-whisper keeps the teacher's encoder and initialises a two-layer decoder from the teacher's
first and last decoder layers, then trains it; this draft is that initialisation, untrained, so it
guesses fewer tokens right than a real distil-whisper. Decoder-only drafts (``--causal``) load as
``WhisperForCausalLM`` and reuse the main model's encoder output (like distil-large-v2's assistant);
seq2seq drafts carry the full encoder (like distil-large-v3).

    python scripts/make_draft.py models/whisper-base models/whisper-base-draft [--layers 0,5] [--causal]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperForCausalLM, WhisperForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's compat module
from compat import dtype_argument  # noqa: E402

SHARED_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json")


def build_draft(base: Path, directory: Path, layers: tuple[int, ...] = (0, 1), causal: bool = True) -> Path:
    """Write a draft of ``base`` with the given decoder layers (renumbered from 0) to ``directory``."""
    teacher = WhisperForConditionalGeneration.from_pretrained(base, **dtype_argument(torch.float32))
    config = WhisperConfig.from_pretrained(base)
    config.decoder_layers = len(layers)
    draft = WhisperForCausalLM(config) if causal else WhisperForConditionalGeneration(config)
    state = {}
    for name, tensor in teacher.state_dict().items():
        if causal and not name.startswith("model.decoder."):
            continue
        if name.startswith("model.decoder.layers."):
            index = int(name.split(".")[3])
            if index not in layers:
                continue
            name = name.replace(f"layers.{index}.", f"layers.{layers.index(index)}.", 1)
        state[name] = tensor
    missing, unexpected = draft.load_state_dict(state, strict=False)
    if missing not in ([], ["proj_out.weight"]) or unexpected:  # proj_out is tied to the token embeddings
        raise RuntimeError(f"draft weights do not fit: missing {missing}, unexpected {unexpected}")
    directory.mkdir(parents=True, exist_ok=True)
    draft.save_pretrained(directory)
    for name in SHARED_FILES:
        shutil.copy(base / name, directory / name)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--layers", default="0,1", help="teacher decoder layers to keep (distil-whisper: first and last)")
    parser.add_argument("--causal", action="store_true", help="decoder-only draft (WhisperForCausalLM)")
    args = parser.parse_args()
    print(build_draft(args.base, args.directory, tuple(int(i) for i in args.layers.split(",")), args.causal))


if __name__ == "__main__":
    main()
