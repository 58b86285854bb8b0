#!/usr/bin/env bash
# Runs the four imbalance-ablation members as two one-thread lanes side by side (resumable).
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
lane() { for s in "$@"; do .venv/bin/ferens train-member --config "experiments/ablation/$s.toml" --resume; done; }
mkdir -p runs
lane none weighted > runs/lane-a.log 2>&1 &
lane focal oversample > runs/lane-b.log 2>&1 &
wait
