#!/usr/bin/env bash
# One piece of the embedded model's campaign on a GPU machine (see the Makefile's gpu-pack). It starts from the
# shipped weights with a fresh optimizer (the CPU run's full state, ~100 MB, does not travel), with the campaign's
# settings (campaign.args), a larger batch and more frequent checkpoints. The log and the last exported checkpoint
# go to $OUT/train-gpu (runs/train-gpu without $OUT). GPU_PYTHON, GPU_DEVICE, GPU_MINUTES, GPU_BATCH change it.
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${GPU_PYTHON:-python3}"
if [ -d .whl ]; then  # what the machine's Python lacks: tree-sitter and its grammars
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
work=/tmp/train-gpu
result="${OUT:-runs}/train-gpu"
# shellcheck disable=SC2046  # campaign.args is a list of options, split on purpose
"$python" -m engine.training.train --corpus runs/gpu-corpus --tokenizer engine/embedded_model/tokenizer.json \
    --out "$work" --resume --init-from engine/embedded_model --device "${GPU_DEVICE:-cuda}" \
    --minutes "${GPU_MINUTES:-8}" --batch-size "${GPU_BATCH:-64}" $(cat engine/training/campaign.args) \
    --checkpoint-minutes 2 --eval-every 2
mkdir -p "$result"
cp "$work/log.jsonl" "$result/"
cp -r "$work/checkpoint" "$result/"
