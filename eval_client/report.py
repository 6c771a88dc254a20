"""Per-item results → summary → console table, JSON report, Markdown report with PNG plots."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field

from eval_client.client import Attempt, ErrorKind
from eval_client.live import LiveTurn
from eval_client.metrics import DiarizationCounts, EditCounts, LatencyStats, latency_stats, total


class ItemResult(BaseModel):
    id: str
    duration_s: float
    ok: bool
    reference: str | None
    hypothesis: str | None  # None when the request failed
    error_kind: ErrorKind | None = None
    error: str | None = None
    attempts: list[Attempt]
    latency_s: float | None = None
    first_text_s: float | None = None  # streamed requests
    elapsed_s: float
    words: EditCounts | None = None  # successful items with a reference
    chars: EditCounts | None = None
    words_if_failed: EditCounts | None = None  # failed items with a reference: all words deleted
    diarization: DiarizationCounts | None = None
    turns: list[LiveTurn] = Field(default_factory=list, description="Live sessions: each turn's text and timings.")

    @property
    def wer(self) -> float | None:
        return self.words.error_rate if self.words else None

    @property
    def cer(self) -> float | None:
        return self.chars.error_rate if self.chars else None


class Summary(BaseModel):
    items: int
    succeeded: int
    failed: int
    failures_by_kind: dict[str, int]
    attempts: int
    failed_attempts_by_kind: dict[str, int] = Field(description="Every failed try, including those a retry recovered.")
    wer: float | None = Field(description="Corpus WER over succeeded items; failures excluded.")
    cer: float | None
    wer_failures_as_deletions: float | None = Field(description="Corpus WER with each failed item scored as an empty transcript.")
    scored_items: int
    der: float | None = None
    jer: float | None = None
    latency_s: LatencyStats
    first_text_s: LatencyStats | None = Field(None, description="Streamed requests: time to the first text.")
    turn_first_delta_s: LatencyStats | None = Field(None, description="Live sessions, per turn: from sending its first audio to its first text.")
    turn_final_s: LatencyStats | None = Field(None, description="Live sessions, per turn: from sending its last speech to its final text.")
    audio_s: float = Field(description="Seconds of audio in succeeded items.")
    wall_s: float
    real_time_factor: float | None = Field(description="Sum of request latencies / audio seconds (succeeded items).")
    throughput_audio_s_per_s: float | None = Field(description="Audio seconds transcribed per wall-clock second.")
    requests_per_s: float | None


class EvalReport(BaseModel):
    base_url: str
    protocol: str
    dataset: str
    concurrency: int
    world_size: int = 1
    started_at: float = Field(description="Unix time; shards merge over min(start)..max(finish).")
    finished_at: float
    summary: Summary
    items: list[ItemResult]


def summarize(items: list[ItemResult], wall_s: float) -> Summary:
    done = [item for item in items if item.ok]
    words = total([item.words for item in items if item.words])
    with_failures = words + total([item.words_if_failed for item in items if item.words_if_failed])
    diarized = [item.diarization for item in done if item.diarization]
    diarization = sum(diarized[1:], diarized[0]) if diarized else None
    audio_s = sum(item.duration_s for item in done)
    latency_sum = sum(item.latency_s or 0.0 for item in done)
    return Summary(
        items=len(items),
        succeeded=len(done),
        failed=len(items) - len(done),
        failures_by_kind=dict(Counter(item.error_kind for item in items if not item.ok)),
        attempts=sum(len(item.attempts) for item in items),
        failed_attempts_by_kind=dict(Counter(a.error_kind for item in items for a in item.attempts if a.error_kind)),
        wer=words.error_rate,
        cer=total([item.chars for item in items if item.chars]).error_rate,
        wer_failures_as_deletions=with_failures.error_rate,
        scored_items=sum(1 for item in items if item.words),
        der=diarization.der_rate if diarization else None,
        jer=diarization.jer_rate if diarization else None,
        latency_s=latency_stats([item.latency_s for item in done if item.latency_s is not None]),
        first_text_s=latency_stats(firsts) if (firsts := [item.first_text_s for item in done if item.first_text_s is not None]) else None,
        turn_first_delta_s=latency_stats(deltas) if (deltas := [t.first_delta_s for item in done for t in item.turns if t.first_delta_s is not None]) else None,
        turn_final_s=latency_stats(finals) if (finals := [t.final_s for item in done for t in item.turns if t.final_s is not None]) else None,
        audio_s=audio_s,
        wall_s=wall_s,
        real_time_factor=latency_sum / audio_s if audio_s else None,
        throughput_audio_s_per_s=audio_s / wall_s if wall_s > 0 else None,
        requests_per_s=len(done) / wall_s if wall_s > 0 else None,
    )


def merge(shards: list[EvalReport]) -> EvalReport:
    """One report from the shards of a multi-process run; corpus figures recomputed from the items."""
    items = [item for shard in shards for item in shard.items]
    started, finished = min(s.started_at for s in shards), max(s.finished_at for s in shards)
    first = shards[0]
    return first.model_copy(update={
        "world_size": len(shards), "started_at": started, "finished_at": finished,
        "items": items, "summary": summarize(items, finished - started),
    })


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _sec(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_rows(report: EvalReport) -> list[tuple[str, str]]:
    s = report.summary
    lat = s.latency_s
    rows = [
        ("endpoint", f"{report.base_url} ({report.protocol})"),
        ("dataset", report.dataset),
        ("items", f"{s.items} ({s.succeeded} ok, {s.failed} failed)"),
        ("failures by kind", ", ".join(f"{k}: {v}" for k, v in s.failures_by_kind.items()) or "none"),
        ("attempts", f"{s.attempts} (failed tries: " + (", ".join(f"{k}: {v}" for k, v in s.failed_attempts_by_kind.items()) or "none") + ")"),
        ("WER (failures excluded)", f"{_pct(s.wer)} over {s.scored_items} items"),
        ("WER (failures as deletions)", _pct(s.wer_failures_as_deletions)),
        ("CER", _pct(s.cer)),
    ]
    if s.der is not None:
        rows += [("DER", _pct(s.der)), ("JER", _pct(s.jer))]
    rows += [
        ("latency s (p50/p90/p95/p99)", f"{_sec(lat.p50)} / {_sec(lat.p90)} / {_sec(lat.p95)} / {_sec(lat.p99)}"),
        ("latency s (mean, min-max)", f"{_sec(lat.mean)}, {_sec(lat.min)}-{_sec(lat.max)}"),
    ]
    if s.first_text_s is not None:
        first = s.first_text_s
        rows += [("time to first text s (p50/p90, mean)", f"{_sec(first.p50)} / {_sec(first.p90)}, {_sec(first.mean)}")]
    for name, stats in (("live turns: first delta s (p50/p95, n)", s.turn_first_delta_s), ("live turns: final text after speech s (p50/p95, n)", s.turn_final_s)):
        if stats is not None:
            rows += [(name, f"{_sec(stats.p50)} / {_sec(stats.p95)}, {stats.count}")]
    rows += [
    ("real-time factor", _sec(s.real_time_factor)),
        ("throughput", f"{_sec(s.throughput_audio_s_per_s)} audio s/s, {_sec(s.requests_per_s)} req/s"),
        ("audio / wall", f"{s.audio_s:.1f} s / {s.wall_s:.1f} s (concurrency {report.concurrency}, {report.world_size} process(es))"),
    ]
    return rows


def console_table(report: EvalReport) -> str:
    rows = summary_rows(report)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def write_reports(report: EvalReport, out_dir: Path) -> dict[str, Path]:
    """``report.json``, ``report.md`` and its PNG plots in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md",
             "latency_plot": out_dir / "latency_hist.png", "wer_plot": out_dir / "wer_by_item.png"}
    paths["json"].write_text(report.model_dump_json(indent=2))
    _plot_latency(report, paths["latency_plot"])
    _plot_wer(report, paths["wer_plot"])
    paths["markdown"].write_text(markdown(report, paths))
    return paths


def markdown(report: EvalReport, paths: dict[str, Path]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.finished_at))
    lines = [f"# ASR evaluation — {when}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in summary_rows(report)]
    lines += ["", f"![latency histogram]({paths['latency_plot'].name})", "", f"![WER by item]({paths['wer_plot'].name})", ""]
    failed = [item for item in report.items if not item.ok]
    if failed:
        lines += ["## Failed requests", "", "| item | kind | attempts | error |", "|---|---|---:|---|"]
        lines += [f"| {i.id} | {i.error_kind} | {len(i.attempts)} | {_cell(i.error)} |" for i in failed]
        lines.append("")
    answered = sorted((i for i in report.items if i.ok), key=lambda i: (i.wer is None, -(i.wer or 0)))  # worst first, unscored last
    lines += ["## Items by WER", "", "| item | audio s | latency s | WER | hypothesis |", "|---|---:|---:|---:|---|"]
    lines += [f"| {i.id} | {i.duration_s:.1f} | {_sec(i.latency_s)} | {_pct(i.wer)} | {_cell(i.hypothesis)} |" for i in answered]
    return "\n".join(lines) + "\n"


def _cell(text: str | None, limit: int = 120) -> str:
    text = (text or "").replace("|", "\\|").replace("\n", " ").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plot_latency(report: EvalReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    latencies = [item.latency_s for item in report.items if item.latency_s is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(latencies, bins=min(30, max(5, len(latencies))), color="tab:blue")
    for name, value in (("p50", report.summary.latency_s.p50), ("p95", report.summary.latency_s.p95)):
        if value is not None:
            ax.axvline(value, linestyle="--", color="black")
            ax.annotate(name, (value, ax.get_ylim()[1] * 0.9))
    ax.set(xlabel="request latency (s)", ylabel="requests", title=f"Latency, {len(latencies)} successful requests")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_wer(report: EvalReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [item for item in report.items if item.words or item.words_if_failed]
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(items)), 4))
    ax.bar([i.id for i in items], [100 * (i.wer or 0) if i.ok else 100.0 for i in items],
           color=["tab:green" if i.ok else "tab:red" for i in items])
    ax.set(ylabel="WER (%)", title="WER by item (red: failed, scored as deletions)")
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
