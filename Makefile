# Two entry points on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv demo test test-fast lint flops clean

$(STAMP): setup.py requirements/constraints.txt scripts/install_ros_launch.sh
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c requirements/constraints.txt -e '.[dev,ros,fastervit]'
	PYTHON=$(PY) scripts/install_ros_launch.sh
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m mobius_ros.cli demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m 'not slow and not ros'

lint: $(STAMP)
	$(PY) -m ruff check .

flops: $(STAMP)
	$(PY) -m mobius_ros.cli flops --variant MOBIUS-R50 --size 800x800 --classes 80

clean:
	rm -rf $(VENV) build install log
