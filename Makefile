# Two commands for a fresh machine: `make run` (set-up + dvc repro) and `make test` (set-up + pytest).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Stage commands in dvc.yaml call `python` and `dvc`: put the venv first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Python reads and writes bytecode caches (__pycache__, inside .venv and the project) even where the shell sets
# PYTHONDONTWRITEBYTECODE, which some CI images and containers do: with it, every process compiles torch's modules
# anew (about 10 s an import). Measured on 2 cores, the same venv: pytest 483 s with it set, 230 s without.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup run test test-slow bench label-efficiency grading-study seeds-study clean

setup: $(STAMP)

# Plain pip, so a user's own index, find-links and proxy settings apply. --no-compile skips writing
# bytecode for all ~14,000 installed modules (torch and its CUDA wheels are most of them): Python compiles
# only the modules a run imports, the first time (about 2,000 for a train stage; about 4 s, once).
# Measured on 2 cores with the wheels already local, two alternating runs each: 154 s and 161 s with a pip
# upgrade and compiling, 135 s and 114 s like this.
$(STAMP): pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile -c requirements.lock -e '.[test]'
	touch $@

run: setup
	dvc repro

# ruff first (line length, imports, pyflakes; settings in pyproject.toml), then pytest on two workers
# (pytest-xdist), one test module at a time each: the end-to-end DVC tests share one repository inside
# their module and run on one worker while the other takes the rest of the suite.
test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadscope --no-loadscope-reorder

# The end-to-end study tests, left out of `make test`: label efficiency (about 5 minutes on 2 cores) and
# grading (about 4 minutes).
test-slow: setup
	$(PY) -m pytest -m slow

# Training throughput in fp32 and bf16 autocast against torchvision, data loading against the raw
# JPEGs, preprocessing throughput, multiply-adds; writes metrics/bench.{json,md}. A few minutes on
# 2 cores, longer where the CPU has no native bf16 (emulated bf16 is slow).
bench: setup
	$(PY) benchmarks/bench.py

# The label-efficiency study (docs/label-efficiency.md): ResNet18 with and without self-supervised pretraining at each
# share of labelled training patients in studies/label_efficiency/params.yaml. A pipeline of its own, so `make run`
# never starts it; it reuses the main pipeline's data set (running synthesize when that is stale), not its models.
label-efficiency: setup
	dvc repro studies/label_efficiency/dvc.yaml

# The grading study (docs/grading.md): ResNet18 pretrained, one network per seed in studies/grading/params.yaml, as
# trained and with its last layer refitted, without and with the two-eye blend, chosen on validation. A pipeline of
# its own, so `make run` never starts it; it reuses the main pipeline's processed set and start point (running
# preprocess and pretrain@resnet18 when those are stale), not its trained models. Writes docs/grading-results.md.
grading-study: setup
	dvc repro studies/grading/dvc.yaml

# The seeds study (docs/seeds.md): the four variants, each trained with every seed in studies/seeds/params.yaml, and
# the study's questions answered over those seeds. A pipeline of its own, so `make run` never starts it; it reuses the
# main pipeline's processed set and start points (running preprocess and pretrain when those are stale), not its
# trained models.
seeds-study: setup
	dvc repro studies/seeds/dvc.yaml

clean:
	rm -rf $(VENV) data models checkpoints .dvc/tmp .dvc/cache studies/label_efficiency/data studies/label_efficiency/models studies/label_efficiency/checkpoints \
		studies/grading/models studies/grading/checkpoints studies/seeds/models studies/seeds/checkpoints
