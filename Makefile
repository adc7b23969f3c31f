# Two commands on a fresh machine (Python 3.11+): `make serve` and `make test`.
# torch comes as CPU wheels by default (TORCH=cpu): the CPU build from the PyTorch index when
# that index answers within a few seconds, else the default index's build (with CUDA, several
# GB). `make serve TORCH=cuda` installs the CUDA build from the default index on purpose.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_REQUIREMENT := torch>=2.4,<2.15
INDEX_PROBE_TIMEOUT_S ?= 4

# Only on a venv without torch: later `pip install -e .` runs then keep the build chosen here.
define install_torch
	@if $(BIN)/python -c "import torch" 2>/dev/null; then :; \
	elif [ "$(TORCH)" = "cuda" ]; then \
		echo "torch: CUDA build from the default index (TORCH=cuda)"; \
		$(BIN)/pip install --quiet "$(TORCH_REQUIREMENT)"; \
	elif [ "$(TORCH)" != "cpu" ]; then \
		echo "TORCH must be cpu or cuda, not '$(TORCH)'" >&2; exit 2; \
	elif $$(command -v timeout >/dev/null && echo timeout $(INDEX_PROBE_TIMEOUT_S)) $(BIN)/python -c "import sys, urllib.request; \
urllib.request.urlopen(sys.argv[1], timeout=$(INDEX_PROBE_TIMEOUT_S))" \
		"$(TORCH_CPU_INDEX)/torch/" >/dev/null 2>&1; then \
		echo "torch: CPU build from $(TORCH_CPU_INDEX)"; \
		$(BIN)/pip install --quiet --index-url "$(TORCH_CPU_INDEX)" "$(TORCH_REQUIREMENT)"; \
	else \
		echo "torch: $(TORCH_CPU_INDEX) not reachable; the default index's build instead (with CUDA, several GB)"; \
	fi
endef

.PHONY: serve test lint train benchmarks clean

# Runtime dependencies only: the service needs the checkpoint, not the training code's extras.
$(VENV)/.serve: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(install_torch)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(install_torch)
	$(BIN)/pip install --quiet -e '.[train,dev]' -e ./client
	touch $@ $(VENV)/.serve

# `make serve API_KEY_FILE=.vae-api-key` requires an API key kept in that file (made on first
# use, readable by you only), so a second shell can send it without seeing it printed:
# curl -H "Authorization: Bearer $(cat .vae-api-key)" ... A key exported as VAE_API_KEY
# works too, but only shells that export the same value can call the API.
API_KEY_FILE ?=

serve: $(VENV)/.serve  ## start the service on the shipped checkpoint at http://127.0.0.1:8000 (TORCH=cuda for GPU wheels, API_KEY_FILE=.vae-api-key to require a key)
	@if [ -n "$(API_KEY_FILE)" ]; then \
		if [ ! -s "$(API_KEY_FILE)" ]; then \
			(umask 077 && $(BIN)/python -c "import secrets; print(secrets.token_hex(32))" > "$(API_KEY_FILE)") || exit 1; \
			echo "API key: generated into $(API_KEY_FILE) (readable by you only)"; \
		fi; \
		echo "API key: required; it is in $(API_KEY_FILE): curl -H \"Authorization: Bearer \$$(cat $(API_KEY_FILE))\" ..."; \
		VAE_API_KEY="$$(cat "$(API_KEY_FILE)")" exec $(BIN)/python -m app; \
	elif [ -n "$$(printf %s "$${VAE_API_KEY:-}" | tr -d '[:space:]')" ]; then \
		echo "API key: required (VAE_API_KEY from this shell; a shell calling the API needs the same value)"; \
	else \
		echo "API key: off, anyone who reaches the port may call the API (make serve API_KEY_FILE=.vae-api-key requires one)"; \
	fi; \
	exec $(BIN)/python -m app

test: $(VENV)/.dev  ## install everything and run the whole test suite
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

train: $(VENV)/.dev  ## retrain the published model (needs MNIST under VAE_DATA_ROOT or ./data)
	$(BIN)/vae-train --arch resconv --precision bf16 --channels-last --epochs 75 \
		--kl-warmup-epochs 5 --iwae-images 1000 --out runs/resconv-v2  # the published run (model v2), seed 42

benchmarks: $(VENV)/.dev  ## training speed, anomaly scores, HTTP load (needs wrk: apt-get install wrk), request path
	@command -v wrk >/dev/null || { echo "the load benchmark needs wrk: sudo apt-get install wrk"; exit 1; }
	$(BIN)/python -m benchmarks.train_speed
	$(BIN)/python -m benchmarks.anomaly
	$(BIN)/python -m benchmarks.serve_load
	$(BIN)/python -m benchmarks.request_path

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
