"""What the server measures, in its own Prometheus registry (one per app, so apps built side by side
in tests or in one process never share counters)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

UNMATCHED = "unmatched"  # the route label of requests no route matched (404, and 405 on a known path)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("asr_requests", "HTTP requests by route and status.", ["route", "method", "status"], registry=registry)
        self.latency = Histogram("asr_request_duration_seconds", "HTTP request latency by route.", ["route"], registry=registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
        self.inference_time = Histogram("asr_inference_duration_seconds", "Time in the handler per request (excludes queueing).", registry=registry,
                                        buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
        self.first_text = Histogram("asr_time_to_first_text_seconds", "Streamed requests: time from the request to its first text.", registry=registry,
                                    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.audio_seconds = Counter("asr_audio_seconds", "Seconds of audio transcribed.", ["route"], registry=registry)
        self.errors = Counter("asr_errors", "Error responses by kind (client_closed_request: the client went away).", ["kind"], registry=registry)
        self.queue_depth = Gauge("asr_queue_depth", "Requests waiting for an inference worker.", registry=registry)
        self.in_flight = Gauge("asr_inferences_in_flight", "Requests being run by the handler now.", registry=registry)
        self.admitted_audio = Gauge("asr_admitted_audio_seconds", "Seconds of audio held by admitted requests (MAX_AUDIO_SECONDS_IN_FLIGHT bounds it).", registry=registry)
        self.admission_waiting = Gauge("asr_admission_waiting", "Requests whose body is in, waiting to be admitted.", registry=registry)
        self.ready = Gauge("asr_model_ready", "1 once the models are loaded.", registry=registry)

    def watch_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def watch_admission(self, audio_seconds: Callable[[], float], waiting: Callable[[], float]) -> None:
        self.admitted_audio.set_function(audio_seconds)
        self.admission_waiting.set_function(waiting)

    def render(self) -> bytes:
        return generate_latest(self.registry)
