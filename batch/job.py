"""A batch transcription job on Ray Data: inputs → pool of handler actors → JSONL/Parquet files.

Resumable by construction: results are files under one output folder, keyed by item id; a new
run over the same folder reads which ids are there and transcribes only the others.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import pyarrow.compute as pc
from pydantic import BaseModel, Field

from batch.results import finished_rows
from batch.sources import discover
from batch.worker import REPO_DIR, Transcribe
from config import InferenceConfig

logger = logging.getLogger(__name__)


class JobSpec(BaseModel):
    inputs: list[str] = Field(min_length=1)
    output: Path
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    settings: dict[str, Any] = Field(default_factory=dict, description="ModelSettings fields (models, backend, device…) for every worker.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="InferenceConfig fields applied to every item.")
    workers: int = Field(2, ge=1, description="Actors, each with its own handler.")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    batch_size: int = Field(4, ge=1, description="Items handed to one handler.transcribe_batch call.")
    address: str | None = Field(None, description="Ray cluster address ('auto', 'ray://host:10001'); None starts a local one.")
    id_column: str = "id"
    audio_column: str = "audio"
    namespace_ids: bool = False


class Summary(BaseModel):
    skipped: int = Field(description="Input items an earlier run had finished, not redone.")
    processed: int = Field(description="Items this run wrote.")
    errors: int = Field(description="Error rows among those.")
    in_output: int = Field(description="Result rows in the output folder after this run.")
    audio_hours: float = Field(description="Audio this run transcribed.")
    wall_seconds: float = Field(description="This run, start to end: Ray start-up and model loading included.")
    audio_hours_per_hour: float
    output: str


def run(spec: JobSpec) -> Summary:
    """Transcribe every input item not yet in ``spec.output``; return what this run did."""
    started = time.perf_counter()
    InferenceConfig.parse(spec.parameters)  # a bad parameter fails here, not once per item in every actor
    sources = discover(spec.inputs, spec.id_column, spec.audio_column, spec.namespace_ids)
    before = finished_rows(spec.output, spec.output_format)
    done = set(before.column("id").to_pylist())
    files = [row for row in sources.files if row["id"] not in done]
    logger.info("%d item(s); %d already done in %s", len(sources.files), len(sources.files) - len(files), spec.output)

    import ray
    import ray.data

    start_ray(spec)
    if files:
        # One block per batch: blocks are what the actor pool hands out, so small ones spread the work.
        dataset = ray.data.from_items(files, override_num_blocks=math.ceil(len(files) / spec.batch_size))
        results = dataset.map_batches(
            Transcribe,
            fn_constructor_kwargs={"settings": worker_settings(spec), "parameters": spec.parameters},
            batch_size=spec.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=spec.workers),
            num_cpus=spec.cpus_per_worker,
            num_gpus=spec.gpus_per_worker or None,
            udf_modifying_row_count=False,
        )
        spec.output.mkdir(parents=True, exist_ok=True)
        if spec.output_format == "parquet":
            results.write_parquet(str(spec.output))
        else:
            results.write_json(str(spec.output), force_ascii=False)
    after = finished_rows(spec.output, spec.output_format)
    new = after.filter(pc.invert(pc.is_in(after.column("id"), value_set=before.column("id"))))
    wall = time.perf_counter() - started
    audio_hours = (pc.sum(new.column("duration")).as_py() or 0.0) / 3600
    return Summary(
        skipped=len(sources.files) - len(files),
        processed=new.num_rows,
        errors=new.num_rows - new.column("error").null_count,
        in_output=after.num_rows,
        audio_hours=round(audio_hours, 4),
        wall_seconds=round(wall, 2),
        audio_hours_per_hour=round(audio_hours / (wall / 3600), 2),
        output=str(spec.output),
    )


def worker_settings(spec: JobSpec) -> dict[str, Any]:
    """Each actor gets as many CPU threads as CPUs it reserves, unless the settings say otherwise:
    N actors with the libraries' default (all cores each) would oversubscribe the machine N times."""
    threads = max(1, math.floor(spec.cpus_per_worker))
    return {"torch_threads": threads, "cpu_threads": threads, **spec.settings}


def start_ray(spec: JobSpec) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home from a batch job
    # Workers import handler/config/batch from the repository, wherever Ray starts them.
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))}}
    if spec.address:
        ray.init(address=spec.address, runtime_env=runtime_env, log_to_driver=True)
        return
    # A local cluster: the actors' CPUs plus one for Ray Data's read and write tasks, which would
    # otherwise wait behind actors holding every CPU.
    cpus = max(os.cpu_count() or 1, math.ceil(spec.workers * spec.cpus_per_worker) + 1)
    ray.init(num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=True)


