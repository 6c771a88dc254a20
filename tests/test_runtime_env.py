"""The handler under the Inference Endpoints runtime's own pins.

The huggingface-inference-toolkit image pins transformers 4.51.3 and huggingface_hub 0.30.2, then runs
`pip install -r requirements.txt` from this repository; its start-up imports
`transformers.file_utils.is_tf_available` and builds `Starlette(on_startup=...)`. `make runtime-env`
(a prerequisite of `make test`) builds `.venv-runtime` that way; these tests check what pip kept there
and run the handler's contract tests (marked `toolkit_contract`) on those pins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_DIR

RUNTIME_PYTHON = REPO_DIR / os.environ.get("RUNTIME_VENV", ".venv-runtime") / "bin" / "python"
TOOLKIT_PINS = {"transformers": "4.51.3", "huggingface-hub": "0.30.2"}


@pytest.fixture(scope="module")
def runtime_python() -> str:
    assert RUNTIME_PYTHON.exists(), f"{RUNTIME_PYTHON} is missing: `make runtime-env` builds it (`make test` does it first)"
    return str(RUNTIME_PYTHON)


def run_in_runtime(runtime_python: str, code: str) -> str:
    result = subprocess.run([runtime_python, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_pip_kept_the_toolkit_pins(runtime_python):
    versions = json.loads(run_in_runtime(runtime_python, """
import json
from importlib.metadata import version
print(json.dumps({name: version(name) for name in ("transformers", "huggingface-hub", "starlette", "torch", "pyannote.audio")}))
"""))
    print("resolved in the runtime-like environment:", versions)
    assert {name: versions[name] for name in TOOLKIT_PINS} == TOOLKIT_PINS
    assert int(versions["starlette"].split(".")[0]) < 1


def test_the_toolkit_start_up_still_works(runtime_python):
    output = run_in_runtime(runtime_python, """
import transformers.file_utils
transformers.file_utils.is_tf_available()
from starlette.applications import Starlette
Starlette(on_startup=[])
import transformers
print(transformers.__file__)
""")
    # The runtime's transformers, not the main venv's 5.x showing through the image layer.
    assert ".venv-runtime" in output


def test_handler_contract_on_the_toolkit_pins(runtime_python):
    result = subprocess.run(
        [runtime_python, "-m", "pytest", "-m", "toolkit_contract", "-q", "-p", "no:cacheprovider", "tests/test_handler.py", "tests/test_diarization.py"],
        cwd=REPO_DIR, capture_output=True, text=True, timeout=1500,
    )
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout
