# Two commands: `make run` and `make test`. Both create .venv and install the project first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test chat bench bench-gpu clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: on a machine without CUDA this takes the CPU wheel (small);
	# on a CUDA machine pip picks the CUDA build from the registry as usual.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/rinna-bot run

chat: $(STAMP)
	$(VENV)/bin/rinna-bot chat

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.window
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.burst
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.staggered
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.loop_lag
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.flood

bench-gpu: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.gpu

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
