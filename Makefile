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

.PHONY: install test infill train
install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

# Line 16 of the sample ends in `return `: the cursor sits after it (columns count from 1).
infill: install
	$(VENV)/bin/diffgemma-infill examples/sample.py --line 16 --character 12 --seed 0 --show-canvas

# One piece of the embedded model's training campaign (see the model card): resumes runs/train exactly, or starts
# from the shipped weights when that state is lost. MINUTES of one thread; stop any time (it checkpoints).
MINUTES ?= 120
CAMPAIGN := --precision bfloat16 --hole-mix editor --canvas-length 16 --noise-schedule high --learning-rate 0.002 --warmup-steps 200 \
	--total-steps 20000 --checkpoint-minutes 10 --eval-every 3 --eval-holes 100
train: install
	test -f runs/corpus/train.jsonl || $(PY) -m engine.training.corpus build --out runs/corpus
	$(PY) -m engine.training.train --corpus runs/corpus --tokenizer engine/embedded_model/tokenizer.json \
		--out runs/train --resume --init-from engine/embedded_model --minutes $(MINUTES) $(CAMPAIGN)
