"""The handler under the Inference Endpoints runtime's own pins.

The huggingface-inference-toolkit image installs the toolkit's own list (transformers 4.51.3,
huggingface_hub 0.30.2, starlette and uvicorn unpinned, pyctcdecode with numpy<2, ...), then runs
`pip install -r requirements.txt` from this repository; its start-up imports
`transformers.file_utils.is_tf_available` and builds `Starlette(on_startup=...)`. `make runtime-env`
(a prerequisite of `make test`) builds `.venv-runtime` in that order; these tests check what pip
resolved at each step and run the handler's contract tests (marked `toolkit_contract`) on those pins.
With TOOLKIT_SRC (a checkout of the toolkit's public source), the toolkit's real app serves the handler.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import DATA_DIR, DIARIZATION_MODEL, REPO_DIR, TOOLKIT_SRC, LiveServer, manifest_rows

RUNTIME_PYTHON = REPO_DIR / os.environ.get("RUNTIME_VENV", ".venv-runtime") / "bin" / "python"
TOOLKIT_PINS = {"transformers": "4.51.3", "huggingface-hub": "0.30.2"}


@pytest.fixture(scope="module")
def runtime_python() -> str:
    assert RUNTIME_PYTHON.exists(), f"{RUNTIME_PYTHON} is missing: `make runtime-env` builds it (`make test` does it first)"
    return str(RUNTIME_PYTHON)


def run_in_runtime(runtime_python: str, code: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([runtime_python, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def major(version: str) -> int:
    return int(version.split(".")[0])


def test_pip_kept_the_toolkit_pins_and_brought_starlette_below_1(runtime_python):
    toolkit_step = json.loads((RUNTIME_PYTHON.parent.parent / "toolkit-step.json").read_text())
    versions = json.loads(run_in_runtime(runtime_python, """
import json
from importlib.metadata import version
print(json.dumps({name: version(name) for name in ("transformers", "huggingface-hub", "starlette", "numpy", "pyctcdecode", "torch", "pyannote.audio")}))
"""))
    print("after the toolkit's install list:", toolkit_step, "\nafter requirements.txt:", versions)
    # The image's situation, reproduced: its unpinned starlette resolves to 1.x, and pyctcdecode holds numpy below 2.
    assert major(toolkit_step["starlette"]) >= 1 and major(toolkit_step["numpy"]) < 2, toolkit_step
    assert {name: versions[name] for name in TOOLKIT_PINS} == TOOLKIT_PINS
    assert major(versions["starlette"]) < 1
    # requirements.txt lifts numpy to 2.x beside pyctcdecode's numpy<2 pin: the start-up still works (below).
    assert major(versions["numpy"]) >= 2


def test_the_toolkit_start_up_still_works(runtime_python):
    output = run_in_runtime(runtime_python, """
import transformers.file_utils
transformers.file_utils.is_tf_available()
from starlette.applications import Starlette
Starlette(on_startup=[])
import pyctcdecode
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


# --- the toolkit's real app (TOOLKIT_SRC) --------------------------------------------------------

JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
JFK = DATA_DIR / "asr_short" / "jfk" / "jfk_openai.flac"


@pytest.fixture(scope="module")
def toolkit(runtime_python) -> LiveServer:
    """The toolkit's own Starlette app (webservice_starlette), as the Endpoints image starts it, on
    the runtime environment, with the handler on the offline models and diarization."""
    source = Path(TOOLKIT_SRC or "") / "src"
    assert (source / "huggingface_inference_toolkit" / "webservice_starlette.py").is_file(), f"TOOLKIT_SRC={TOOLKIT_SRC} is no checkout of huggingface-inference-toolkit"
    env = {
        "PYTHONPATH": str(source), "HF_MODEL_DIR": str(REPO_DIR), "HF_TASK": "automatic-speech-recognition", "HF_HUB_OFFLINE": "1",
        "ASR_MODEL": "models/whisper-base", "ASR_BACKEND": "ctranslate2", "DIARIZATION_MODEL": str(DIARIZATION_MODEL), "ASSISTANT_MODEL": "",
    }
    server = LiveServer(env, command=lambda port: [runtime_python, "-m", "uvicorn", "huggingface_inference_toolkit.webservice_starlette:app", "--host", "127.0.0.1", "--port", str(port)])
    yield server
    server.stop()


@pytest.mark.toolkit_live
def test_the_toolkit_serves_raw_audio_base64_words_and_diarization(toolkit):
    audio = JFK.read_bytes()
    encoded = base64.b64encode(audio).decode()
    raw = httpx.post(f"{toolkit.url}/", content=audio, headers={"Content-Type": "audio/flac"}, timeout=300)
    plain = httpx.post(f"{toolkit.url}/", json={"inputs": encoded}, timeout=300)
    # With `parameters`, the toolkit base64-decodes `inputs` itself (HF_TASK is an audio task): the handler gets bytes.
    words = httpx.post(f"{toolkit.url}/predict", json={"inputs": encoded, "parameters": {"timestamps": "word", "diarize": False}}, timeout=300)
    for response in (raw, plain, words):
        assert response.status_code == 200, response.text
        assert response.json()["text"] == JFK_TEXT
    assert " ".join(word["text"] for word in words.json()["words"]) == JFK_TEXT
    call = next(row for row in manifest_rows("asr_short") if row["id"] == "pyannote_sample")
    diarized = httpx.post(f"{toolkit.url}/", json={"inputs": base64.b64encode(Path(call["audio"]).read_bytes()).decode(), "parameters": {"num_speakers": 2}}, timeout=600)
    assert diarized.status_code == 200, diarized.text
    assert len({turn["speaker"] for turn in diarized.json()["speakers"]}) == 2


@pytest.mark.toolkit_live
def test_the_toolkit_answers_bad_input_with_a_400_naming_the_problem(toolkit):
    garbage = httpx.post(f"{toolkit.url}/", content=b"RIFF not really a wav file", headers={"Content-Type": "audio/wav"}, timeout=60)
    unknown = httpx.post(f"{toolkit.url}/", json={"inputs": base64.b64encode(JFK.read_bytes()).decode(), "parameters": {"languag": "en"}}, timeout=60)
    assert garbage.status_code == unknown.status_code == 400
    assert "audio" in garbage.json()["error"].lower()
    assert "languag" in unknown.json()["error"]


@pytest.mark.toolkit_live
def test_inference_client_of_the_image_needs_a_content_type(toolkit, runtime_python):
    """huggingface_hub 0.30's ``automatic_speech_recognition(path)`` sends no Content-Type, which the
    toolkit refuses (with ``extra_body`` too); the README's calls name it: the audio's type, or
    application/json with ``extra_body`` (the parameters)."""
    output = run_in_runtime(runtime_python, f"""
import json
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
audio = open({str(JFK)!r}, "rb").read()
try:
    InferenceClient(model={toolkit.url!r}).automatic_speech_recognition(audio)
    bare = "accepted"
except HfHubHTTPError as error:
    bare = error.response.text
typed = InferenceClient(model={toolkit.url!r}, headers={{"Content-Type": "audio/flac"}}).automatic_speech_recognition(audio).text
with_body = InferenceClient(model={toolkit.url!r}, headers={{"Content-Type": "application/json"}}).automatic_speech_recognition(audio, extra_body={{"language": "en"}}).text
print(json.dumps({{"bare": bare, "typed": typed, "with_body": with_body}}))
""", env={"HF_HUB_OFFLINE": "0"})  # the endpoint is on loopback; offline mode refuses every URL
    result = json.loads(output.strip().splitlines()[-1])
    assert 'Content type "None" not supported' in json.loads(result["bare"])["error"]
    assert result["typed"] == result["with_body"] == JFK_TEXT
