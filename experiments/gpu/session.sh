#!/usr/bin/env bash
# The device side of a GPU session (see experiments/gpu/README.md): run from the repo root as
# the device tool's command, with the part named in the call's `carry`.
#
#   bash experiments/gpu/session.sh 1                 # part1: wheels -> /tmp/site, images half,
#                                                     #        then pytest -m cuda tests/test_cuda.py
#   bash experiments/gpu/session.sh 2 [MEMBER...]     # part2 (the last): rebuild + verify the
#                                                     #        data, then train MEMBERs
#   bash experiments/gpu/session.sh all [MEMBER...]   # every part carried at once
#   bash experiments/gpu/session.sh train [MEMBER...] # on a still-warm machine: train (resume)
#
# MEMBER names come from the study file (default: the first one). Results: one tar in $OUT,
# ferens-gpu-results.tar.gz (results dir, runs/*/metrics.csv, config.json, summary.json, the
# member logs and these logs; never weights), and progress.tar.gz refreshed every 20 s.
#
# Environment (defaults in brackets):
#   FERENS_GPU_PY        interpreter [python3]; the device's python3 holds torch
#   FERENS_GPU_CARRY     carry folder [.gpu-carry]
#   FERENS_GPU_WORK      unpacked data, cache and logs [/tmp/ferens-gpu]
#   FERENS_GPU_SITE      where the wheels go [/tmp/site]; FERENS_GPU_WHEELS=0 skips them
#   FERENS_GPU_TESTS     1 runs the CUDA tests in stage 1 [1]
#   FERENS_GPU_STUDY     [experiments/study_gpu.toml]
#   FERENS_GPU_DEADLINE  seconds the training may take before it is stopped [420]
#   FERENS_GPU_SET       "key=value ..." set on every member (a trial: results go to
#                        <results_dir>-trial and runs to runs-trial, never mixed with real ones)
set -uo pipefail

STAGE=${1:?usage: session.sh 1|2|...|all|train [MEMBER...]}
shift
PY=${FERENS_GPU_PY:-python3}
CARRY=${FERENS_GPU_CARRY:-.gpu-carry}
WORK=${FERENS_GPU_WORK:-/tmp/ferens-gpu}
SITE=${FERENS_GPU_SITE:-/tmp/site}
STUDY=${FERENS_GPU_STUDY:-experiments/study_gpu.toml}
DEADLINE=${FERENS_GPU_DEADLINE:-420}
OUT=${OUT:-$PWD/gpu-out}
REPO=$PWD
KIT="$REPO/experiments/gpu/kit.py"
mkdir -p "$OUT" "$WORK/logs"
LOG="$WORK/logs/stage-$STAGE.log"
exec > >(tee -a "$LOG" "$OUT/stage-$STAGE.log") 2>&1

export PYTHONUNBUFFERED=1 FERENS_DATA="$WORK/fer2013.csv" FERENS_CACHE="$WORK/cache"
if [ "${FERENS_GPU_WHEELS:-1}" != 0 ]; then
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi

say() { echo "[session $(date +%H:%M:%S)] $*"; }
die() { say "ERROR: $*"; exit 2; }
nparts() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['parts'])" "$1"; }

install_wheels() {
  [ "${FERENS_GPU_WHEELS:-1}" = 0 ] && { say "wheels skipped (FERENS_GPU_WHEELS=0)"; return; }
  ls "$CARRY"/part1/wheels/*.whl >/dev/null 2>&1 || die "no wheels in $CARRY/part1/wheels"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$CARRY"/part1/wheels/*.whl || die "pip install of the wheels failed"
  say "wheels installed into $SITE"
}

check_env() {
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    "$PY" - <<'EOF'
import sys, importlib.metadata as md
print("python", sys.version.split()[0])
for name in ("torch", "timm", "numpy", "scikit-learn", "albumentations", "imbalanced-learn",
             "pydantic", "opencv-python-headless", "typer", "safetensors", "onnxruntime"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import albumentations, imblearn, ferens.train  # what training imports
print("imports ok")
EOF
  } 2>&1 | tee "$WORK/logs/env.txt"
  cp "$WORK/logs/env.txt" "$OUT/env.txt"
}

unpack_part() {  # unpack_part K
  local part="$CARRY/part$1"
  [ -f "$part/manifest.json" ] || die "$part/manifest.json missing: name $part in the call's carry"
  "$PY" "$KIT" unpack "$part" "$WORK" || die "unpacking $part failed"
}

results_dir() {
  "$PY" -c "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb')).get('study',{}).get('results_dir','results/study'))" "$1"
}

snapshot() {  # snapshot DEST.tar.gz: small outputs and logs, never weights or checkpoints
  local dest=$1 tmp="$WORK/snapshot.$$.tar.gz" paths=()
  for p in "$RESULTS" "$RUNS"; do [ -e "$p" ] && paths+=("$p"); done
  tar czf "$tmp" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.ckpt' \
    --exclude='checkpoint' --exclude='*.lock' --exclude="$RUNS/*/predictions" \
    "${paths[@]}" -C "$WORK" logs 2>/dev/null
  mv -f "$tmp" "$dest"
}

train() {  # train [MEMBER...]
  local study="$STUDY" members=("$@")
  [ -f "$FERENS_DATA" ] || die "$FERENS_DATA missing: run the last part's stage first"
  RESULTS=$(results_dir "$STUDY"); RUNS=runs
  if [ -n "${FERENS_GPU_SET:-}" ]; then
    RESULTS="$RESULTS-trial"; RUNS=runs-trial; study="$WORK/study-trial.toml"
    local sets=(); for kv in $FERENS_GPU_SET; do sets+=(--set "$kv"); done
    "$PY" "$KIT" derive-study "$STUDY" "$study" "${sets[@]}" --results-dir "$RESULTS" \
      --out-dir "$RUNS" || die "cannot derive the trial study"
  fi
  if [ ${#members[@]} = 0 ]; then
    members=("$("$PY" -c "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb'))['members'][0]['name'])" "$study")")
  fi
  local only=(); for m in "${members[@]}"; do only+=(--only "$m"); done
  say "training ${members[*]} from $study for at most ${DEADLINE}s (results in $RESULTS)"
  ( while sleep 20; do snapshot "$OUT/progress.tar.gz"; done ) &
  local progress=$!
  local start=$SECONDS
  timeout -s TERM -k 60 "$DEADLINE" "$PY" -m ferens.cli study "$study" "${only[@]}" \
    2>&1 | tee "$WORK/logs/study.log"
  local rc=${PIPESTATUS[0]}
  kill "$progress" 2>/dev/null; wait "$progress" 2>/dev/null
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    say "deadline of ${DEADLINE}s hit after $((SECONDS - start))s: members stopped (they resume" \
        "from their last epoch with 'session.sh train' while the machine is warm)"
  else
    say "study exited with $rc after $((SECONDS - start))s"
  fi
  for m in "${members[@]}"; do
    [ -f "$RUNS/$m/metrics.csv" ] && { say "$m metrics.csv:"; cat "$RUNS/$m/metrics.csv"; }
  done
  snapshot "$OUT/ferens-gpu-results.tar.gz"
  rm -f "$OUT/progress.tar.gz"
  say "wrote $OUT/ferens-gpu-results.tar.gz ($(du -h "$OUT/ferens-gpu-results.tar.gz" | cut -f1))"
  return "$rc"
}

rebuild() {
  "$PY" "$KIT" rebuild "$WORK" "$FERENS_DATA" || die "the rebuilt data failed its checks"
  [ -f "$WORK/fer2013new.csv" ] && say "FER+ votes at $WORK/fer2013new.csv"
}

cuda_tests() {
  [ "${FERENS_GPU_TESTS:-1}" = 0 ] && { say "CUDA tests skipped"; return 0; }
  "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py 2>&1 \
    | tee "$OUT/cuda-tests.log"
  say "CUDA tests exited with ${PIPESTATUS[0]}"
}

say "stage $STAGE on $(hostname), repo $REPO, work $WORK"
case "$STAGE" in
  all)
    install_wheels; check_env
    n=$(nparts "$CARRY/part1/manifest.json") || die "no $CARRY/part1"
    for k in $(seq 1 "$n"); do unpack_part "$k"; done
    cuda_tests; rebuild; train "$@" ;;
  train)
    train "$@" ;;
  [0-9]*)
    [ "$STAGE" = 1 ] && install_wheels
    unpack_part "$STAGE"
    n=$(nparts "$CARRY/part$STAGE/manifest.json")
    [ "$STAGE" = 1 ] && { check_env; cuda_tests; }
    if [ "$STAGE" = "$n" ]; then
      rebuild; train "$@"
    else
      say "part $STAGE of $n unpacked; make the call for stage $((STAGE + 1)) NOW (the machine" \
          "stays warm only 30 s)"
    fi ;;
  *) die "unknown stage $STAGE" ;;
esac
