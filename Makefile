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

# Training throughput in fp32 and bf16 autocast against torchvision, data loading against the raw
# JPEGs, preprocessing throughput, multiply-adds; writes metrics/bench.{json,md}. A few minutes on
# 2 cores, longer where the CPU has no native bf16 (emulated bf16 is slow).
bench: setup
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) data models checkpoints .dvc/tmp .dvc/cache
