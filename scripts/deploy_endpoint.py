"""Create a Hugging Face Inference Endpoint that runs this repository's ``handler.py``.

The endpoint serves a Hub model repository holding this code (handler.py, its sibling modules and
requirements.txt); the models it loads come from env vars, as in the HF blog's example:
``ASR_MODEL``, ``ASSISTANT_MODEL``, ``DIARIZATION_MODEL``, and ``HF_TOKEN`` as a secret (the gated
pyannote pipeline needs it). The token also authenticates this call; it is never printed.

    HF_TOKEN=hf_... python scripts/deploy_endpoint.py --repository <user>/asr-diarization-endpoint --wait
    python scripts/deploy_endpoint.py --repository <user>/asr-diarization-endpoint --dry-run   # show the request
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from huggingface_hub import constants, create_inference_endpoint

BLOG_MODELS = {
    "ASR_MODEL": "openai/whisper-large-v3",
    "ASSISTANT_MODEL": "distil-whisper/distil-large-v3",
    "DIARIZATION_MODEL": "pyannote/speaker-diarization-3.1",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repository", required=True, help="Hub model repo holding this code (handler.py + requirements.txt)")
    parser.add_argument("--name", default="asr-diarization", help="endpoint name")
    parser.add_argument("--namespace", default=None, help="user or organization (default: the token's user)")
    parser.add_argument("--revision", default=None, help="commit or branch of --repository")
    parser.add_argument("--asr-model", default=BLOG_MODELS["ASR_MODEL"])
    parser.add_argument("--assistant-model", default=BLOG_MODELS["ASSISTANT_MODEL"], help="'' for none")
    parser.add_argument("--diarization-model", default=BLOG_MODELS["DIARIZATION_MODEL"], help="'' for none")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env var, e.g. MAX_AUDIO_SECONDS=3600 (repeatable)")
    parser.add_argument("--vendor", default="aws")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--instance-type", default="nvidia-a10g", help="the blog's g5.2xlarge is an A10G")
    parser.add_argument("--instance-size", default="x1")
    parser.add_argument("--min-replica", type=int, default=0)
    parser.add_argument("--max-replica", type=int, default=1)
    parser.add_argument("--scale-to-zero-timeout", type=int, default=15, help="minutes idle before scaling to zero")
    parser.add_argument("--type", default="authenticated", choices=["authenticated", "public", "private"], help="authenticated: callers need an HF token (the blog's \"protected\")")
    parser.add_argument("--token-env", default="HF_TOKEN", help="env var holding the HF token (never pass a token on the command line)")
    parser.add_argument("--api-url", default=None, help=f"Inference Endpoints API base (default {constants.INFERENCE_ENDPOINTS_ENDPOINT}); for proxies and tests")
    parser.add_argument("--wait", action="store_true", help="wait until the endpoint is running, then print its URL")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds --wait waits")
    parser.add_argument("--poll-seconds", type=float, default=10, help="how often --wait polls")
    parser.add_argument("--dry-run", action="store_true", help="print the request (secret masked) and send nothing")
    return parser.parse_args(argv)


def endpoint_request(args: argparse.Namespace, token: str | None) -> dict[str, Any]:
    """The keyword arguments of ``create_inference_endpoint``: a custom-handler endpoint on the
    given hardware, models as env vars, the token as a secret."""
    env = {"ASR_MODEL": args.asr_model, "ASSISTANT_MODEL": args.assistant_model, "DIARIZATION_MODEL": args.diarization_model}
    env = {key: value for key, value in env.items() if value}  # '' = not deployed
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env expects KEY=VALUE, got {item!r}")
        if key == "HF_TOKEN":
            raise SystemExit("HF_TOKEN is sent as a secret from the environment, not with --env")
        env[key] = value
    return {
        "name": args.name,
        "repository": args.repository,
        "revision": args.revision,
        "namespace": args.namespace,
        "framework": "pytorch",
        "task": "custom",  # the runtime loads handler.py from the repository
        "accelerator": args.accelerator,
        "vendor": args.vendor,
        "region": args.region,
        "instance_type": args.instance_type,
        "instance_size": args.instance_size,
        "min_replica": args.min_replica,
        "max_replica": args.max_replica,
        "scale_to_zero_timeout": args.scale_to_zero_timeout,
        "type": args.type,
        "env": env,
        "secrets": {"HF_TOKEN": token} if token else None,
        "token": token,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    token = os.environ.get(args.token_env) or None
    request = endpoint_request(args, token)
    if args.dry_run:
        shown = {**request, "token": "***" if token else None, "secrets": {"HF_TOKEN": "***"} if token else None}
        print(json.dumps(shown, indent=2))
        return 0
    if not token:
        print(f"error: set {args.token_env} to a Hugging Face token (it authenticates the call and becomes the endpoint's HF_TOKEN secret)", file=sys.stderr)
        return 2
    if request["env"].get("DIARIZATION_MODEL", "").startswith("pyannote/"):
        print("note: pyannote pipelines are gated: accept their conditions on the Hub with the token's account", file=sys.stderr)
    if args.api_url:
        constants.INFERENCE_ENDPOINTS_ENDPOINT = args.api_url.rstrip("/")
    try:
        endpoint = create_inference_endpoint(**request)
        print(f"created endpoint {endpoint.namespace}/{endpoint.name}: {endpoint.status}")
        if args.wait:
            endpoint.wait(timeout=args.timeout, refresh_every=args.poll_seconds)
            print(f"running at {endpoint.url}")
    except Exception as error:  # HTTP and timeout errors: the message, never the token
        print(f"error: {type(error).__name__}: {str(error).replace(token, '***')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
