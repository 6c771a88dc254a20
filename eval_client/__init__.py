"""Evaluation client for ASR endpoints (ours or any other): WER/CER, DER/JER, latency, failures.

    from eval_client import ASRClient, ClientConfig, evaluate, load_items
    client = ASRClient(ClientConfig(base_url="http://127.0.0.1:8000", protocol="hf"))
    report = evaluate(client, load_items("../shared/data/asr_short/manifest.jsonl"))
"""

from eval_client.client import ASRClient, ClientConfig, RequestOutcome, encode_audio_to_base64_wav, parse_transcription
from eval_client.data import EvalItem, load_audio, load_items
from eval_client.report import EvalReport, ItemResult, write_reports
from eval_client.runner import evaluate, evaluate_async

__all__ = [
    "ASRClient", "ClientConfig", "EvalItem", "EvalReport", "ItemResult", "RequestOutcome",
    "encode_audio_to_base64_wav", "evaluate", "evaluate_async", "load_audio", "load_items", "parse_transcription", "write_reports",
]
