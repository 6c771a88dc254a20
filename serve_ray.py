"""The HTTP server on Ray Serve: the same FastAPI app (``server.create_app``) as the ingress, the
``EndpointHandler`` in a deployment of N replicas (or autoscaled), each on its own CPUs/GPUs.

    python serve_ray.py                      # local Ray cluster, HOST:PORT, RAY_REPLICAS replicas
    serve run deploy/ray/serve.yaml          # a cluster (KubeRay's RayService takes the same YAML)

Two ways to batch (``RAY_BATCHING``): ``serve`` — every request goes to the replicas on its own
and Ray Serve's ``@serve.batch`` gathers those arriving together at a replica into one
``transcribe_batch`` call; ``ingress`` — the server's own micro-batcher groups waiting requests in
the ingress and sends each group to one replica. A replica that dies with requests in flight: those
requests are answered 503 + Retry-After (the work is idempotent: retrying is safe), and Serve
starts a replacement.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from ray import serve
from ray.exceptions import RayActorError

from config import InferenceConfig, ModelSettings, ServerSettings

REPO_DIR = Path(__file__).resolve().parent
logger = logging.getLogger("ray.serve")
REPLICA_DEPLOYMENT = "asr"  # the ASR replicas' deployment name, which the ingress looks them up by


class RaySettings(BaseSettings):
    """Replica settings, from the environment (``make serve-ray RAY_REPLICAS=2``) or a Serve config's ``args``."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    replicas: int = Field(2, ge=1, validation_alias=AliasChoices("RAY_REPLICAS", "replicas"), description="Fixed replica count (ignored when RAY_MAX_REPLICAS is set).")
    min_replicas: int = Field(1, ge=0, validation_alias=AliasChoices("RAY_MIN_REPLICAS", "min_replicas"))
    max_replicas: int | None = Field(None, ge=1, validation_alias=AliasChoices("RAY_MAX_REPLICAS", "max_replicas"), description="Set: autoscale between min and max replicas.")
    target_ongoing_requests: float = Field(2.0, gt=0, validation_alias=AliasChoices("RAY_TARGET_ONGOING_REQUESTS", "target_ongoing_requests"))
    cpus_per_replica: float = Field(1.0, gt=0, validation_alias=AliasChoices("RAY_CPUS_PER_REPLICA", "cpus_per_replica"))
    gpus_per_replica: float = Field(0.0, ge=0, validation_alias=AliasChoices("RAY_GPUS_PER_REPLICA", "gpus_per_replica"))
    batching: Literal["serve", "ingress"] = Field("serve", validation_alias=AliasChoices("RAY_BATCHING", "batching"))
    max_batch_size: int = Field(8, ge=1, validation_alias=AliasChoices("RAY_MAX_BATCH_SIZE", "max_batch_size"))
    batch_wait_timeout_s: float = Field(0.05, ge=0, validation_alias=AliasChoices("RAY_BATCH_WAIT_TIMEOUT_S", "batch_wait_timeout_s"))

    @model_validator(mode="after")
    def _autoscaling_bounds(self) -> "RaySettings":
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"RAY_MIN_REPLICAS ({self.min_replicas}) is greater than RAY_MAX_REPLICAS ({self.max_replicas})")
        return self

    def scaling(self) -> dict[str, Any]:
        if self.max_replicas is None:
            return {"num_replicas": self.replicas}
        return {"autoscaling_config": {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas, "target_ongoing_requests": self.target_ongoing_requests}}


def replica_model_settings(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every replica loads: this process's ModelSettings (env / .env) as plain fields, threads
    matched to the replica's CPUs. HF_TOKEN stays out (Serve stores deployment arguments):
    replicas read it from their own environment."""
    return ModelSettings(**(overrides or {})).model_dump(exclude={"hf_token"}, exclude_none=True)


def build_app(args: dict[str, Any] | None = None):
    """The Serve application (``serve run serve_ray:build_app``, ``import_path`` of a Serve config).
    ``args``: RaySettings fields, plus ``model`` (ModelSettings fields) and ``server`` (ServerSettings
    fields); anything not given comes from the environment."""
    args = dict(args or {})
    model = replica_model_settings(args.pop("model", None))
    server = args.pop("server", None) or {}
    ray_settings = RaySettings(**args)
    threads = max(1, int(ray_settings.cpus_per_replica))
    model = {"torch_threads": threads, "cpu_threads": threads, **model}
    options = {"num_cpus": ray_settings.cpus_per_replica}
    if ray_settings.gpus_per_replica:
        options["num_gpus"] = ray_settings.gpus_per_replica
    replica = ASRReplica.options(
        ray_actor_options=options,
        # More than a batch may wait at a replica: the next batch forms while one decodes.
        max_ongoing_requests=2 * ray_settings.max_batch_size,
        **ray_settings.scaling(),
    ).bind(model, ray_settings.max_batch_size, ray_settings.batch_wait_timeout_s)
    ingress = serve.deployment(name="ingress", num_replicas=1, ray_actor_options={"num_cpus": 0})(serve.ingress(ingress_app_builder(ray_settings, ServerSettings(**server)))())
    # Bound to the replicas so that they are part of the application; the ingress reaches them by name.
    return ingress.bind(replica)


# --- deployments ---------------------------------------------------------------------------------


@serve.deployment(name=REPLICA_DEPLOYMENT, health_check_period_s=10, graceful_shutdown_timeout_s=30)
class ASRReplica:
    """One ``EndpointHandler`` (models loaded once per replica)."""

    def __init__(self, model: dict[str, Any], max_batch_size: int, batch_wait_timeout_s: float):
        from handler import EndpointHandler

        self.handler = EndpointHandler(str(REPO_DIR), settings=ModelSettings(_env_file=None, **model))
        self.replica = serve.get_replica_context().replica_id.unique_id
        # The handler is not thread-safe: one decoding thread, off the replica's event loop.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")
        self.transcribe.set_max_batch_size(max_batch_size)
        self.transcribe.set_batch_wait_timeout_s(batch_wait_timeout_s)
        logger.info("replica %s ready (pid %d)", self.replica, os.getpid())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def transcribe(self, jobs: list[tuple[Any, InferenceConfig]]) -> list[tuple[Any, str]]:
        """One request per call from the caller's side; Serve hands the requests that arrived
        together to one call, as a list."""
        return await self.transcribe_many(jobs)

    async def transcribe_many(self, jobs: list[tuple[Any, InferenceConfig]]) -> list[tuple[Any, str]]:
        """Several requests as one ``transcribe_batch`` call: ``(response or error, replica id)`` each,
        errors as values so every request keeps its own."""
        results = await asyncio.get_running_loop().run_in_executor(self._thread, self.handler.transcribe_batch, list(jobs))
        logger.info("replica %s transcribed %d request(s)", self.replica, len(jobs))
        return [(result, self.replica) for result in results]

    def pid(self) -> int:
        return os.getpid()


def ingress_app_builder(ray_settings: RaySettings, server: ServerSettings) -> Callable[[], Any]:
    """What Serve calls in the ingress replica to get its ASGI app: ``server.create_app``, its
    handler a ``RemoteHandler`` over the ASR replicas. A builder function (not an app built here)
    because the app must be made in the ingress's process; ``serve.ingress`` takes one in every
    Ray release we support, where a class-level ``__serve_build_asgi_app__`` needs Ray 2.56+ (and
    with it starlette 1.x, which the Inference Endpoints toolkit cannot run on)."""

    def build_asgi_app() -> Any:
        from server import create_app

        replica = serve.get_deployment_handle(REPLICA_DEPLOYMENT, app_name=serve.get_replica_context().app_name)
        remote = RemoteHandler(replica, ray_settings)
        if ray_settings.batching == "serve":
            # Every request to the replicas at once; @serve.batch does the grouping there.
            update = {"micro_batch_size": 1, "inference_workers": remote.max_in_flight()}
        else:
            # One group of waiting requests per replica at a time.
            update = {"micro_batch_size": ray_settings.max_batch_size, "inference_workers": remote.max_replicas()}
        app = create_app(server.model_copy(update=update), handler_factory=lambda: remote)
        remote.watch(app)
        return app

    return build_asgi_app


class RemoteHandler:
    """What the server's inference queue calls, forwarded to the replicas. Streaming hooks do not
    cross processes: a streamed request gets its segments at once, with the result."""

    # The models run in the replicas: the ingress's memory budget holds only the requests' bodies.
    runs_models_in_process = False

    def __init__(self, replica: Any, ray_settings: RaySettings):
        self.replica = replica
        self.ray_settings = ray_settings
        self.settings = ModelSettings()
        self._served = None  # per-replica request counter, once the app exists

    def max_replicas(self) -> int:
        return self.ray_settings.max_replicas or self.ray_settings.replicas

    def max_in_flight(self) -> int:
        return 2 * self.ray_settings.max_batch_size * self.max_replicas()

    def watch(self, app: Any) -> None:
        from prometheus_client import Counter

        registry = app.state.server.metrics.registry
        self._served = Counter("asr_replica_requests", "Requests answered, by Ray Serve replica.", ["replica"], registry=registry)

    def transcribe(self, inputs: Any, config: InferenceConfig, *, on_segments: Any = None, cancelled: threading.Event | None = None) -> Any:
        result = self.transcribe_batch([(inputs, config, on_segments, cancelled)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def transcribe_batch(self, requests: list[tuple]) -> list[Any]:
        jobs = [(request[0], request[1]) for request in requests]
        cancelled = [request[3] if len(request) > 3 else None for request in requests]
        if self.ray_settings.batching == "serve":
            responses = [self.replica.transcribe.remote(job) for job in jobs]
            results = [self._wait(response, flag) for response, flag in zip(responses, cancelled)]
        else:
            flag = cancelled[0] if all(c is cancelled[0] for c in cancelled) else None
            results = self._wait(self.replica.transcribe_many.remote(jobs), flag, many=len(jobs))
        out = []
        for index, result in enumerate(results):
            if isinstance(result, tuple):
                value, replica = result
                if self._served is not None:
                    self._served.labels(replica).inc()
                out.append(value)
            else:
                out.append(result)
            if on_segments := (requests[index][2] if len(requests[index]) > 2 else None):
                if not isinstance(out[-1], BaseException):
                    on_segments(list(out[-1].chunks))
        return out

    def _wait(self, response: Any, cancelled: threading.Event | None, many: int = 0) -> Any:
        from errors import RequestCancelled, ServiceUnavailable

        try:
            while True:
                if cancelled is not None and cancelled.is_set():
                    response.cancel()
                    error = RequestCancelled("the client went away; its request was cancelled on the replica")
                    return [error] * many if many else error
                try:
                    return response.result(timeout_s=0.5)
                except TimeoutError:
                    continue
        except RayActorError as died:  # the replica's process is gone (killed, out of memory, node lost)
            logger.warning("a replica died with a request in flight: %s", type(died).__name__)
            error = ServiceUnavailable("the replica running this request stopped (it is being replaced); the request was not completed — retry it", 5)
            return [error] * many if many else error


def main() -> None:
    """``make serve-ray``: a local Ray cluster (loopback only) serving on HOST:PORT until stopped."""
    import ray

    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray_settings = RaySettings()
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))}}
    # Logical CPUs: every replica's reservation plus the proxy and controller, on any machine size.
    cpus = max(os.cpu_count() or 1, int(ray_settings.cpus_per_replica * (ray_settings.max_replicas or ray_settings.replicas)) + 1)
    ray.init(num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(), name="asr", route_prefix="/", blocking=True)


if __name__ == "__main__":
    main()
