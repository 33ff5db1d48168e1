# The two commands of the README's quickstart. Both set up a local virtual environment (.venv)
# with uv and need nothing but Python 3.11+ and the package index.
PY ?= python3
VENV := .venv
UV := $(VENV)/bin/uv

.PHONY: bench test setup setup-dev clean

$(UV):
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q uv

setup: $(UV)
	$(UV) pip install -q -p $(VENV) -e .

setup-dev: $(UV)
	$(UV) pip install -q -p $(VENV) -e '.[dev]'
	@if [ -f scripts/setup_verifiers_venvs.sh ]; then bash scripts/setup_verifiers_venvs.sh; fi

# main job: the leaderboard of every baseline policy on built-in scenarios (no network, no key)
bench: setup
	$(VENV)/bin/kv-cache-rl bench

# the test suite (what .ci/run calls)
test: setup-dev
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) .venvs build *.egg-info
