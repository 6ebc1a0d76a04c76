# Quick start: `make demo`, `make test`. Both set up .venv on first use and are idempotent;
# each installs the extras it uses (demo: .[demo]; test: .[test], which takes in serve, viz,
# demo and generative).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast clean-cache browser bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# .venv/.installed-EXTRA: latent installed (editable) with that extra of pyproject.toml.
# torch>=2.14 (pyproject) makes pip take the registry's torch+torchvision pair, not the
# local CPU-only torch 2.13 wheel that has no matching torchvision.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[$*]'
	touch $@

.PRECIOUS: $(VENV)/.installed-%

install: $(STAMP)

demo: $(VENV)/.installed-demo
	$(BIN)/latent demo

# The browser tests of `latent serve` drive Debian's chromium through Playwright (nothing is
# downloaded by Playwright itself); as root (CI) it is installed here when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "the browser tests need chromium: sudo apt-get install chromium"; fi; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# the unit layer (marker `unit`: tests/unit, no model loads), in well under 2 minutes; collecting only
# its folder spares importing the other layers
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The performance benchmarks (README "Performance"): long (about an hour on 2 cores) and they
# install the peers they compare against (hnswlib, chromadb) into .venv.
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_ann.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_latency.py
	$(BIN)/python benchmarks/bench_scale.py

clean-cache:
	rm -rf "$${LATENT_CACHE_DIR:-$$HOME/.cache/latent}"
