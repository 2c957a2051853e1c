# Each target makes its own virtualenv and installs what it needs (torch pinned to the CPU build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ltd-installed

.PHONY: demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,ray]'
	touch $(STAMP)

demo: $(STAMP)  ## the main job on the built-in default pair
	$(VENV)/bin/ltd demo

test: $(STAMP)  ## lint, then the test suite (slow tests left out; `$(PY) -m pytest -m slow` runs them)
	$(VENV)/bin/ruff check ltd tests
	$(PY) -m pytest

bench: $(STAMP)  ## every method on held-out code and Spec-Bench, tiny pair, shipped policy
	$(VENV)/bin/ltd bench --pair tiny --methods ar,hf_ar,hf_heuristic,hf_confidence,static,grid,partner,ltd,oracle \
	    --policy policies/tiny-code --limit 30 --validation 8 --prompts heldout --prompts specbench \
	    --json experiments/bench/bench.json

clean:
	rm -rf $(VENV) runs
