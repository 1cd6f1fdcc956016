# Two set-up commands on a fresh machine: `make reproduce` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CLASP := $(VENV)/bin/clasp
# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test test-all reproduce reproduce-ladder reproduce-finetune bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test]"
	touch $@

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

# Offline by default; CLIP_MODEL, IMAGES, STEPS and PRESET switch to real data.
reproduce: install
	$(PY) reproduce/run.py

# `make reproduce` plus CLASP on ground truth with 25/50/75 % of it corrupted: downstream score
# against label quality (reproduce/ladder/results.md).
reproduce-ladder: install
	$(PY) reproduce/run.py --ladder --out reproduce/ladder

# Fine-tuning of the three exports of `make reproduce` (made first when missing); budget in docs/results.md.
reproduce-finetune: install
	test -f reproduce/out/exports/clasp/config.json || $(PY) reproduce/run.py
	$(PY) reproduce/finetune.py

bench: install
	$(PY) benchmarks/label_throughput.py
	$(PY) benchmarks/pretrain_step.py
	$(PY) benchmarks/loader.py

clean:
	rm -rf $(VENV) *.egg-info reproduce/out reproduce/ladder
