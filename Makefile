# Two commands for a fresh machine: `make run` (set-up + dvc repro) and `make test` (set-up + pytest).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Stage commands in dvc.yaml call `python` and `dvc`: put the venv first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup run test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

run: setup
	dvc repro

test: setup
	$(PY) -m pytest

# Training and data-loading throughput against torchvision and the raw JPEGs, preprocessing
# throughput, multiply-adds: about a minute on 2 cores; writes metrics/bench.{json,md}.
bench: setup
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) data models checkpoints .dvc/tmp .dvc/cache
