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

import pytest

from conftest import DATA_DIR, REPO_DIR

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


def test_requirements_txt_alone_serves_the_ctranslate2_engine(runtime_python):
    """An Endpoint installs only requirements.txt: the handler on ASR_BACKEND=ctranslate2 transcribes
    there. The runtime venv sees the main venv underneath, so every module that only distributions
    outside requirements.txt's dependency closure provide is made unimportable first, as on an Endpoint
    (libraries that import optional packages when present then take their fallback)."""
    clip = DATA_DIR / "asr_short" / "jfk" / "jfk_openai.flac"
    output = run_in_runtime(runtime_python, """
import importlib.abc, importlib.metadata as metadata, json, re, sys
from packaging.requirements import Requirement
name = lambda raw: re.sub(r"[-_.]+", "-", raw).lower()
wanted = [Requirement(line.split("#")[0].strip()).name for line in open("requirements.txt") if line.split("#")[0].strip()]
closure, todo = set(), [name(n) for n in wanted]
while todo:
    current = todo.pop()
    if current in closure:
        continue
    closure.add(current)
    for raw in metadata.requires(current) or []:
        requirement = Requirement(raw)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            todo.append(name(requirement.name))
absent = {module for module, owners in metadata.packages_distributions().items() if not {name(o) for o in owners} & closure}
class NotInstalled(importlib.abc.MetaPathFinder):  # every finder answers "no such module" for those
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in absent:
            return None
        return self.finder.find_spec(fullname, path, target)
    def find_distributions(self, context=metadata.DistributionFinder.Context()):
        found = getattr(self.finder, "find_distributions", lambda context: [])(context)
        return (d for d in found if name(d.metadata["Name"] or "") in closure)
sys.meta_path[:] = [NotInstalled(finder) for finder in sys.meta_path]
from config import ModelSettings
from handler import EndpointHandler
settings = ModelSettings(_env_file=None, asr_model="models/whisper-base", asr_backend="ctranslate2", diarization_model=None, assistant_model=None)
handler = EndpointHandler(".", settings=settings)
result = handler({"inputs": open(CLIP, "rb").read(), "parameters": {"language": "en"}})
print(json.dumps({"text": result["text"], "blocked": len(absent)}))
""".replace("CLIP", repr(str(clip))))
    result = json.loads(output.strip().splitlines()[-1])
    assert result["blocked"] > 0, "nothing outside requirements.txt was visible: the check proves nothing"
    assert result["text"].startswith("And so my fellow Americans"), result
