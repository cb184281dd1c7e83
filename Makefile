# `make demo` and `make test` install everything they need on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# On a machine without CUDA, pin the CPU build of torch: a plain `torch` requirement
# pulls a multi-GB CUDA build. GPU machines keep pyproject's open range.
TORCH_CPU := torch==2.13.0

.PHONY: install demo test test-nightly bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install --quiet "$(TORCH_CPU)"; fi
	$(BIN)/pip install --quiet -e '.[test,encoder]'
	$(BIN)/pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ray_jobs.demo --config configs/demo.yaml

# The suite CI runs (within 20 minutes on 2 cores); test-nightly adds the long tests
# (marked `nightly`: more searches, the S3 pipeline, a second of each learning test).
# Each ends with the slowest tests' times, so the suite's budget is watched in CI's log.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not nightly" --durations=25

test-nightly: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25

clean:
	rm -rf $(VENV) demo_out .pytest_cache
