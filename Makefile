# Two commands on a fresh machine:
#   make test    -- create .venv, install, run the whole test suite
#   make infill  -- run the infill pipeline on a sample file with the embedded model
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# One intra-op thread: the server tests run client and server processes side by side, and OpenMP threads
# spinning on an oversubscribed 2-core machine slow small matmuls by an order of magnitude.
export OMP_NUM_THREADS ?= 1

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt -e ".[dev,bench]"
	touch $@

.PHONY: install test infill train gpu-pack
install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

# Line 16 of the sample ends in `return `: the cursor sits after it (columns count from 1).
infill: install
	$(VENV)/bin/diffgemma-infill examples/sample.py --line 16 --character 12 --seed 0 --show-canvas

# One piece of the embedded model's training campaign (see the model card): resumes runs/train exactly, or starts
# from the shipped weights when that state is lost. MINUTES of one thread; stop any time (it checkpoints).
MINUTES ?= 120
# The campaign's settings are shared with engine/training/gpu_run.sh.
CAMPAIGN := $(shell cat engine/training/campaign.args)
runs/corpus/train.jsonl: | install
	$(PY) -m engine.training.corpus build --out runs/corpus
train: install runs/corpus/train.jsonl
	$(PY) -m engine.training.train --corpus runs/corpus --tokenizer engine/embedded_model/tokenizer.json \
		--out runs/train --resume --init-from engine/embedded_model --minutes $(MINUTES) $(CAMPAIGN)

# Training on a GPU machine that has torch but nothing else of ours (the device tool: 64 MiB travel with the tree).
# Here, `make gpu-pack` packs the corpus (gzip, about 27 MB) and the tree-sitter wheels the FIM holes need for the
# device's Python 3.12; there, carrying runs/gpu-corpus and .whl: `GPU_MINUTES=8 bash engine/training/gpu_run.sh`.
GRAMMAR_WHEELS := tree-sitter==0.26.1 tree-sitter-c==0.24.2 tree-sitter-cpp==0.23.4 tree-sitter-go==0.25.0 \
	tree-sitter-java==0.23.5 tree-sitter-javascript==0.25.0 tree-sitter-python==0.25.0 tree-sitter-rust==0.24.2 \
	tree-sitter-typescript==0.23.2
gpu-pack: install runs/corpus/train.jsonl
	mkdir -p runs/gpu-corpus .whl
	gzip -c runs/corpus/train.jsonl > runs/gpu-corpus/train.jsonl.gz
	gzip -c runs/corpus/heldout.jsonl > runs/gpu-corpus/heldout.jsonl.gz
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform manylinux1_x86_64 -d .whl $(GRAMMAR_WHEELS)
