# Two entry points, both self-contained on a fresh machine:
#   make demo   set up .venv and run the main job
#   make test   set up .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hexamesh demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check hexamesh tests simulations
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m simulations.netbench --nodes 10000 --messages 1000000 --json

clean:
	rm -rf $(VENV) .demo .pytest_cache .hypothesis
