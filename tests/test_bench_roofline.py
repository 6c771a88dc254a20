"""bench.roofline's FLOP count against torch's own FLOP counter on the real Whisper base model, and
its work counter on a real transcription."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO_DIR
from torch.utils.flop_counter import FlopCounterMode

from bench.roofline import Work, count_work, encoder_cost_by_width, gemm_flops

BASE = REPO_DIR / "models" / "whisper-base"


@pytest.fixture(scope="module")
def whisper():
    from transformers import WhisperForConditionalGeneration

    # eager attention: its score and value products are matmuls torch's counter sees
    return WhisperForConditionalGeneration.from_pretrained(str(BASE), dtype=torch.float32, attn_implementation="eager").eval()


def counted(run) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def test_encoder_flops_match_torchs_count(whisper):
    """One 30 s window: the convolutions and linear layers, and the attention products."""
    config = json.loads((BASE / "config.json").read_text())
    flops = gemm_flops(Work(frames=[3000]), config)
    assert counted(lambda: whisper.model.encoder(torch.zeros(1, 80, 3000))) == flops["int8_linear"] + flops["float32_attention"]


def test_decoder_flops_match_torchs_count(whisper):
    """A full (uncached) pass over 10 tokens: every position attends to all 10 (self-attention
    context 10 x 10), cross-attention keys and values over 1500 encoder positions, the vocabulary projection."""
    config = json.loads((BASE / "config.json").read_text())
    encoded = torch.zeros(1, 1500, 512)
    tokens = torch.zeros(1, 10, dtype=torch.long)
    flops = gemm_flops(Work(tokens=10, self_context=100, cross_tokens=[(1500, 10)]), config)
    measured = counted(lambda: whisper.proj_out(whisper.model.decoder(input_ids=tokens, encoder_hidden_states=encoded, use_cache=False).last_hidden_state))
    assert measured == flops["int8_linear"] + flops["float32_attention"]


def test_work_is_counted_on_a_real_transcription(jfk_flac):
    from asr import build_transcriber
    from audio import load_audio
    from config import InferenceConfig, ModelSettings

    transcriber = build_transcriber(ModelSettings(_env_file=None, asr_model=str(BASE), asr_backend="ctranslate2", compute_type="int8", diarization_model=None, assistant_model=None), REPO_DIR)
    work = count_work(transcriber)
    transcript = transcriber.transcribe(load_audio(jfk_flac).samples, InferenceConfig())
    # JFK (11 s): one full window; the decoder ran the prompt and ~30 text and timestamp tokens
    assert work.frames == [3000] and len(work.cross_tokens) >= 1
    assert len(transcript.text.split()) + 3 < work.tokens < 120
    assert work.self_context > work.tokens

    # the encoder's cost per window grows with its width (about 8x from 10 s to 30 s on CPU)
    costs = encoder_cost_by_width(transcriber.model.encode, transcriber.n_mels, widths=(1000, 3000), batch=2, repeats=1)
    assert 0 < costs[1000] < costs[3000]
