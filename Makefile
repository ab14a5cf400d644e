# monai-diffseg: two commands do everything on a fresh machine with Python >= 3.10.
#   make demo   set up .venv, train the ISIC 2018 bundle briefly on the embedded synthetic dataset, run ensemble inference
#   make test   set up .venv, lint (ruff check + format check), run the whole test suite
#   make label-test   live MONAI Label server test of apps/monailabel (creates its own venv once: MONAI_LABEL_VENV)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.monai-diffseg-installed
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo lint test label-test clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch first: a bare `torch` requirement would pull the CUDA build (several GB) where the CPU wheel is wanted
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" || $(PY) -m pip install --quiet torch
	$(PY) -m pip install --quiet -e ".[all,test]"
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	PY=$(PY) bash scripts/demo.sh

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q tests

label-test:
	bash scripts/label_test.sh

clean:
	rm -rf demo_output .pytest_cache
