# One-command entry points for a fresh machine (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch: the pin keeps pip from pulling the multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
PRESET ?= wavenet
STEPS ?= 200000
# the fastest path on 2 CPU cores (bench/README.md): JAX's 100 steps per jitted lax.scan
BACKEND ?= jax
FAST ?= --fast
# e.g. RUN_FLAGS=--overwrite to train again into a folder that already holds a run
RUN_FLAGS ?=

.PHONY: venv run test bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)" -e ".[all,dev]"
	touch $(STAMP)

venv: $(STAMP)

# makemore finds names.txt (--data, $$MAKEMORE_DATA, data/names.txt) or downloads and verifies it
run: $(STAMP)
	$(BIN)/makemore train --backend $(BACKEND) --preset $(PRESET) --steps $(STEPS) $(FAST) --out runs/$(BACKEND)-$(PRESET) $(RUN_FLAGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# pytest-benchmark suites in bench/ (not part of `make test`): raw JSON, bench.md, bench.json and
# bench.png in runs/bench; `make bench-quick` is wavenet, batch 32, float32 only (about a minute).
# The reference runs committed in bench/results and bench/results-quick are copies of these folders.
bench: $(STAMP)
	$(BIN)/makemore bench --out runs/bench

bench-quick: $(STAMP)
	$(BIN)/makemore bench --quick --out runs/bench-quick

clean:
	rm -rf $(VENV) runs .pytest_cache
