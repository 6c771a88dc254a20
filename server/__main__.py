"""``python -m server``: the app under Uvicorn, shutting down gracefully (what ``make serve`` and the
container run). Plain ``uvicorn server:app`` serves the same routes, but on SIGTERM Uvicorn waits for
running requests without limit, and the orchestrator's SIGKILL then resets their connections.

On SIGTERM (Inference Endpoints and Kubernetes send it before killing) or Ctrl-C: /health answers 503
``draining``, nothing new is admitted, requests waiting for admission get 503 + Retry-After, running
requests get ``SHUTDOWN_GRACE_S`` to finish and are answered 503 after it; then the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from types import FrameType

import uvicorn

from config import ServerSettings
from server.dependencies import ServerState
from server.factory import create_app

logger = logging.getLogger("uvicorn.error")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit and self.loop is not None:
            # A signal handler may interrupt the loop anywhere: the draining itself runs on the loop.
            self.loop.call_soon_threadsafe(self.drain)
        super().handle_exit(sig, frame)

    def drain(self) -> None:
        grace = self.state.settings.shutdown_grace_s
        logger.info("shutting down: no new requests; running ones get %g s (SHUTDOWN_GRACE_S)", grace)
        self.state.admission.drain()
        assert self.loop is not None
        self.loop.call_later(grace, self.state.admission.stop_running)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    settings = ServerSettings()
    app = create_app(settings)
    # Uvicorn's own deadline is a backstop: by then every running request has been answered 503.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 10)
    DrainingServer(config, app.state.server).run()


if __name__ == "__main__":
    main()
