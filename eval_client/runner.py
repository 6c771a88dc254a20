"""Run a dataset through an endpoint and score it; shard across processes and merge on rank 0."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tqdm import tqdm

from eval_client.client import ASRClient, RequestOutcome
from eval_client.data import SAMPLING_RATE, EvalItem, load_audio, shard
from eval_client.metrics import char_counts, deletions_only, diarization_counts, word_counts
from eval_client.report import EvalReport, ItemResult, merge, summarize


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` from the variables ``torchrun`` and ``accelerate launch`` set."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def score_item(item: EvalItem, duration_s: float, outcome: RequestOutcome, collar: float = 0.0) -> ItemResult:
    result = ItemResult(
        id=item.id, duration_s=duration_s, ok=outcome.ok, reference=item.reference, hypothesis=outcome.text,
        error_kind=outcome.error_kind, error=outcome.error, attempts=outcome.attempts,
        latency_s=outcome.latency_s, first_text_s=outcome.first_text_s, elapsed_s=outcome.elapsed_s, turns=outcome.turns,
    )
    if item.reference is not None:
        if outcome.ok:
            result.words = word_counts(item.reference, outcome.text or "")
            result.chars = char_counts(item.reference, outcome.text or "")
        else:
            result.words_if_failed = deletions_only(item.reference)
    if item.rttm is not None and outcome.ok:
        turns = [(s.speaker, s.start, s.end) for s in outcome.speakers]
        result.diarization = diarization_counts(item.rttm, item.uem, turns, duration_s, collar)
    return result


async def evaluate_async(client: ASRClient, items: list[EvalItem], dataset: str = "", collar: float = 0.0, progress: bool = True) -> EvalReport:
    """Transcribe ``items`` (at most ``client.config.concurrency`` at a time) and score them."""
    durations: dict[int, float] = {}

    async def load(index: int):
        samples = await asyncio.to_thread(load_audio, items[index])  # decoding is CPU work: off the loop
        durations[index] = len(samples) / SAMPLING_RATE
        return samples, SAMPLING_RATE

    started = time.time()
    results: list[ItemResult | None] = [None] * len(items)
    with tqdm(total=len(items), desc=f"{client.config.protocol} {client.config.base_url}", unit="req", disable=not progress) as bar:
        async for index, outcome in client.stream(len(items), load):
            results[index] = score_item(items[index], durations[index], outcome, collar)
            bar.set_postfix(failed=sum(1 for r in results if r and not r.ok), refresh=False)
            bar.update(1)
    finished = time.time()
    done = [r for r in results if r is not None]
    return EvalReport(
        base_url=client.config.base_url, protocol=client.config.protocol, dataset=dataset,
        concurrency=client.config.concurrency, started_at=started, finished_at=finished,
        summary=summarize(done, finished - started), items=done,
    )


def evaluate(client: ASRClient, items: list[EvalItem], dataset: str = "", collar: float = 0.0, progress: bool = True) -> EvalReport:
    return asyncio.run(evaluate_async(client, items, dataset, collar, progress))


def evaluate_sharded(client: ASRClient, items: list[EvalItem], out_dir: Path, dataset: str = "", collar: float = 0.0,
                     merge_timeout_s: float = 3600.0) -> EvalReport | None:
    """Evaluate this process's shard; rank 0 waits for every shard file in ``out_dir`` and returns
    the merged report, other ranks return None. Shards meet through files, so ``out_dir`` must be
    shared by all processes (one node, or a shared file system)."""
    rank, world_size = distributed_rank()
    report = evaluate(client, shard(items, rank, world_size), dataset, collar, progress=rank == 0)
    if world_size == 1:
        return report
    out_dir.mkdir(parents=True, exist_ok=True)
    shard_path = out_dir / f"shard-{rank}-of-{world_size}.json"
    shard_path.with_suffix(".tmp").write_text(report.model_dump_json())
    shard_path.with_suffix(".tmp").replace(shard_path)  # atomic: rank 0 never reads half a file
    if rank != 0:
        return None
    paths = [out_dir / f"shard-{r}-of-{world_size}.json" for r in range(world_size)]
    deadline = time.monotonic() + merge_timeout_s
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            missing = [p.name for p in paths if not p.exists()]
            raise TimeoutError(f"shards missing after {merge_timeout_s} s: {missing}")
        time.sleep(0.5)
    merged = merge([EvalReport.model_validate_json(p.read_text()) for p in paths])
    for path in paths:  # a later run in the same folder must not pick up these shards
        path.unlink()
    return merged
