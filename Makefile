# `make demo` and `make test` install everything they need on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# On a machine without CUDA, pin the CPU build of torch: a plain `torch` requirement
# pulls a multi-GB CUDA build. GPU machines keep pyproject's open range.
TORCH_CPU := torch==2.13.0

.PHONY: install chromium demo test test-nightly bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install --quiet "$(TORCH_CPU)"; fi
	$(BIN)/pip install --quiet -e '.[test,encoder]'
	$(BIN)/pip check
	$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# The report's browser test opens it in Debian's Chromium (Playwright drives it; its own
# browser download cannot reach its host here). Installed as root with apt-get where
# there is one; elsewhere the test skips and says why.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Chromium for the report's browser test (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "no Chromium and no apt-get as root: the report's browser test will skip"; fi

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
