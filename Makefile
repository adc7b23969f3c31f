# Two commands on a fresh machine (Python 3.11+): `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint train benchmarks clean

# Runtime dependencies only: the service needs the checkpoint, not the training code's extras.
$(VENV)/.serve: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $@ $(VENV)/.serve

serve: $(VENV)/.serve  ## start the service on the shipped checkpoint at http://127.0.0.1:8000
	$(BIN)/python -m app

test: $(VENV)/.dev  ## install everything and run the whole test suite
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

train: $(VENV)/.dev  ## retrain the published model (needs MNIST under VAE_DATA_ROOT or ./data)
	$(BIN)/vae-train --out runs/conv-default

benchmarks: $(VENV)/.dev
	$(BIN)/python -m benchmarks.train_speed
	$(BIN)/python -m benchmarks.anomaly
	$(BIN)/python -m benchmarks.serve_load

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
