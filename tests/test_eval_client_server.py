"""The evaluation client against our own server (real Whisper base) on loopback, through all three
protocols, on a handful of short dev items."""

from __future__ import annotations

import pytest
from conftest import DATA_DIR

from eval_client.client import ASRClient, ClientConfig
from eval_client.data import SAMPLING_RATE, load_audio, load_items
from eval_client.report import console_table, write_reports
from eval_client.runner import evaluate

# Two short dev items: CPU inference on a shared 2-core machine is slow, so the set stays small.
SHORT_IDS = ("1272-141231-0000", "fleurs-en-004")
API_KEY = "eval-test-key"


@pytest.fixture(scope="module")
def live(start_server):
    return start_server({"API_KEY": API_KEY})


@pytest.fixture(scope="module")
def short_items():
    items = [i for i in load_items(str(DATA_DIR / "asr_short" / "manifest.jsonl")) if i.id in SHORT_IDS]
    assert len(items) == len(SHORT_IDS)
    return items


def client_for(url: str, protocol: str, api_key: str | None = API_KEY) -> ASRClient:
    return ASRClient(ClientConfig(base_url=url, api_key=api_key, protocol=protocol, concurrency=1, timeout_s=300, language="en"))


@pytest.fixture(scope="module")
def hf_report(live, short_items):
    return evaluate(client_for(live.url, "hf"), short_items, dataset="asr_short (2 items)", progress=False)


def test_our_server_scores_on_dev_items(hf_report, tmp_path):
    write_reports(hf_report, tmp_path)
    print(f"\n{console_table(hf_report)}")  # the WER and latency of our server, visible with -s
    s = hf_report.summary
    assert (s.succeeded, s.failed) == (len(SHORT_IDS), 0), [r.error for r in hf_report.items if not r.ok]
    # Whisper base on clean read speech: a sanity bound, far above what it scores, far below garbage.
    assert s.wer is not None and s.wer < 0.25
    assert s.latency_s.count == len(SHORT_IDS) and s.real_time_factor > 0
    assert (tmp_path / "report.md").exists()


@pytest.mark.parametrize("protocol", ["openai", "tt"])
def test_other_protocols_give_the_same_transcript(live, short_items, hf_report, protocol):
    outcome = client_for(live.url, protocol).transcribe_audio(load_audio(short_items[0]), SAMPLING_RATE)
    assert outcome.ok, outcome.error
    assert outcome.text.strip() == hf_report.items[0].hypothesis.strip()


def test_our_server_rejects_a_missing_key_without_retrying(live, short_items):
    report = evaluate(client_for(live.url, "hf", api_key=None), short_items, progress=False)
    assert report.summary.failed == 2 and report.summary.failures_by_kind == {"http_4xx": 2}
    assert all(len(r.attempts) == 1 and r.attempts[0].status == 401 for r in report.items)
    assert report.summary.wer is None and report.summary.wer_failures_as_deletions == 1.0
