#!/usr/bin/env bash
# The device side of a GPU session (experiments/gpu/README.md has the exact calls). Run from the
# repo root as the device tool's command, with the packed part(s) named in the call's carry.
#
#   bash experiments/gpu/session.sh all [MEMBER...]    # data, env, CUDA tests, timing, training
#   bash experiments/gpu/session.sh train [MEMBER...]  # a later call: (data, timing if this is a
#                                                      # fresh machine) then training, resuming
#   bash experiments/gpu/session.sh unpack             # a call that only brings a part (when
#                                                      # pack.py needed more than one call)
#
# Without MEMBERs the timing stage chooses, in the study's order, those that fit the time left.
# Stages: env (10), data (11), tests (12), timing (13), train (14; 15 when the hard stop had to
# kill it). A failing stage prints "STAGE <name> FAILED", leaves markers/<name>.failed and the
# session exits with its code, never 0 and never 124. Only the tests and timing stages let
# training go on (their code is still the exit code): without timing numbers the first
# unfinished member trains, stopped in time by its deadline. Every stage's log is in
# $OUT/session.log as it is written, and the results archive is written whatever happened
# (split into 15 MiB pieces, .0 .1 ..., should it ever pass the tool's 16 MiB a file).
#
# Comes back in $OUT: session.log, env.txt, cuda-tests.log, timing.md, timing.json and
# ferens-gpu-results.tar.gz (the study's results_dir: members' config.json, metrics.csv,
# summary.json, predictions/*.npz, ensembles and report; runs/*/{config.json,metrics.csv,
# summary.json} and the members' logs; logs/, markers/, timing.*; never weights or
# checkpoints); while training, progress.tar.gz (the same, every 20 s), removed at the end.
#
# Environment (defaults in brackets):
#   FERENS_GPU_DEADLINE  seconds from the start by which this script has exited [540]; give the
#                        call a timeout_s about 60 s longer
#   FERENS_GPU_RESERVE   seconds kept after the members' deadline for the study's ensembles,
#                        report and the archive [60]
#   FERENS_GPU_PY        interpreter [python3]; the device's python3 holds torch
#   FERENS_GPU_CARRY     carry folder [.gpu-carry]
#   FERENS_GPU_WORK      unpacked data, cache, runs and logs [/tmp/ferens-gpu]
#   FERENS_GPU_SITE      where carried wheels are installed [/tmp/site]
#   FERENS_GPU_TESTS     0 skips the CUDA tests [1]; FERENS_GPU_TESTS_TIMEOUT [150];
#   FERENS_GPU_TESTS_KEEP seconds the CUDA tests leave before the members' deadline for
#                        timing and training [90] (the CPU rehearsal in tests/ sets less)
#   FERENS_GPU_TIMING_TIMEOUT [150]; FERENS_GPU_TIMING_MIN_LEFT: a `train` call on a machine
#                        without timing numbers times only with this many seconds left [300];
#   FERENS_GPU_LOADER_WORKERS worker counts timed ["0,8"];
#   FERENS_GPU_TIMING_STEPS steps timed per member [20]; FERENS_GPU_MEMBERS "A B ..." the
#                        members timed and chosen from, in priority order [all of the study]
#   FERENS_GPU_STUDY     [experiments/study_gpu.toml]
#   FERENS_GPU_SET       "key=value ..." set on every member: a trial, whose results go to
#                        <results_dir>-trial and runs to runs-trial, never mixed with real ones
#   FERENS_GPU_REPLACE   "key=value ..." in a trial, set only where the study sets key
#   FERENS_GPU_PIECE_BYTES the archive is split into pieces of at most this [15 MiB]
set -uo pipefail

STAGE=${1:-}
shift 2>/dev/null || true
PY=${FERENS_GPU_PY:-python3}
CARRY=${FERENS_GPU_CARRY:-.gpu-carry}
WORK=${FERENS_GPU_WORK:-/tmp/ferens-gpu}
SITE=${FERENS_GPU_SITE:-/tmp/site}
STUDY=${FERENS_GPU_STUDY:-experiments/study_gpu.toml}
BUDGET=${FERENS_GPU_DEADLINE:-540}
RESERVE=${FERENS_GPU_RESERVE:-60}
OUT=${OUT:-$PWD/gpu-out}
REPO=$PWD
KIT="$REPO/experiments/gpu/kit.py"
TIMING="$REPO/experiments/gpu/timing.py"
ARCHIVE=ferens-gpu-results.tar.gz
TIMING_MIN_LEFT=${FERENS_GPU_TIMING_MIN_LEFT:-300}  # a train call times only with this left
PIECE=${FERENS_GPU_PIECE_BYTES:-15728640}  # 15 MiB: each file back from $OUT is at most 16 MiB
START=$(date +%s)
END=$((START + BUDGET))
MEMBER_DEADLINE=$((END - RESERVE))
MARK="$WORK/markers"
mkdir -p "$OUT" "$WORK/logs" "$MARK"

export PYTHONUNBUFFERED=1 FERENS_DATA="$WORK/fer2013.csv" FERENS_CACHE="$WORK/cache"
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE
NEED_CUDA=--need-cuda
case " ${FERENS_GPU_SET:-} " in *" device=cpu "*) NEED_CUDA= ;; esac

say() { echo "[session $(date +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }
left() { echo $(( $1 - $(date +%s) )); }

run_stage() {  # run_stage NAME CODE COMMAND...: markers, timing and a loud failure
  local name=$1 code=$2 t0 rc
  shift 2
  rm -f "$MARK/$name.ok" "$MARK/$name.failed"
  say "stage $name: start"
  t0=$(date +%s)
  "$@"
  rc=$?
  if [ "$rc" = 0 ]; then
    echo "$(( $(date +%s) - t0 ))" > "$MARK/$name.ok"
    say "stage $name: ok ($(( $(date +%s) - t0 )) s)"
    return 0
  fi
  echo "exit $rc after $(( $(date +%s) - t0 )) s" > "$MARK/$name.failed"
  [ "$name" = train ] && [ "$rc" = 15 ] && code=15  # the hard stop's own code
  say "STAGE $name FAILED (exit $rc after $(( $(date +%s) - t0 )) s): session code $code"
  return "$code"
}

install_wheels() {  # only when pack.py --wheels put some in part 1
  ls "$CARRY"/part1/wheels/*.whl >/dev/null 2>&1 || return 0
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$CARRY"/part1/wheels/*.whl || { say "pip install of the wheels failed"; return 1; }
  say "wheels installed into $SITE"
}

env_stage() {
  install_wheels || return 1
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    "$PY" "$KIT" env $NEED_CUDA; } > "$WORK/logs/env.txt" 2>&1
  local rc=$?
  cat "$WORK/logs/env.txt"
  cp "$WORK/logs/env.txt" "$OUT/env.txt"
  return "$rc"
}

data_stage() {
  "$PY" "$KIT" ensure "$CARRY" "$WORK" "$FERENS_DATA" "$@"
}

cap() {  # cap SECONDS DEADLINE MARGIN: SECONDS, or less so that DEADLINE - MARGIN is kept
  local most=$(( $(left "$2") - $3 ))
  [ "$most" -lt "$1" ] && echo "$most" || echo "$1"
}

tests_stage() {
  [ "${FERENS_GPU_TESTS:-1}" = 0 ] && { say "CUDA tests skipped (FERENS_GPU_TESTS=0)"; return 0; }
  local limit
  limit=$(cap "${FERENS_GPU_TESTS_TIMEOUT:-150}" "$MEMBER_DEADLINE" "${FERENS_GPU_TESTS_KEEP:-90}")
  [ "$limit" -gt 10 ] || { say "no time left for the CUDA tests before training"; return 1; }
  timeout -k 10 "$limit" "$PY" -m pytest -m cuda -q -p no:cacheprovider \
    tests/test_cuda.py 2>&1 | tee "$WORK/logs/cuda-tests.log"
  local rc=${PIPESTATUS[0]}
  cp "$WORK/logs/cuda-tests.log" "$OUT/cuda-tests.log"
  return "$rc"
}

study_setup() {  # the study to run (a derived one in a trial), its results and runs folders
  RESULTS=$("$PY" -c "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb')).get('study',{}).get('results_dir','results/study'))" "$STUDY") || return 1
  RUN_STUDY=$STUDY
  export FERENS_RUNS_DIR="$WORK/runs"
  if [ -n "${FERENS_GPU_SET:-}" ]; then
    RESULTS="$RESULTS-trial"; RUN_STUDY="$WORK/study-trial.toml"
    export FERENS_RUNS_DIR="$WORK/runs-trial"
    local sets=() kv
    for kv in $FERENS_GPU_SET; do sets+=(--set "$kv"); done
    for kv in ${FERENS_GPU_REPLACE:-}; do sets+=(--replace "$kv"); done
    "$PY" "$KIT" derive-study "$STUDY" "$RUN_STUDY" "${sets[@]}" --results-dir "$RESULTS" \
      || return 1
  fi
}

timing_stage() {  # timing_stage [MEMBER...]: the members to time (default: all, or $FERENS_GPU_MEMBERS)
  local limit members=("$@")
  [ ${#members[@]} = 0 ] && read -ra members <<< "${FERENS_GPU_MEMBERS:-}"
  limit=$(cap "${FERENS_GPU_TIMING_TIMEOUT:-150}" "$MEMBER_DEADLINE" 20)
  [ "$limit" -gt 10 ] || { say "no time left to time the members"; return 1; }
  # the budget is what is left once timing is done: measured on the way, read by choose
  # members are timed while they fit in the limit (less the process's start); each one's
  # numbers are saved as soon as they are measured, so a kill keeps those
  rm -f "$WORK/timing.json" "$WORK/timing.md"
  timeout -k 10 "$limit" "$PY" "$TIMING" measure "$RUN_STUDY" \
    --out "$WORK/timing.json" --md "$WORK/timing.md" --members "${members[@]}" \
    --steps "${FERENS_GPU_TIMING_STEPS:-20}" --seconds "$(( limit > 40 ? limit - 30 : 10 ))" \
    --loader-workers "${FERENS_GPU_LOADER_WORKERS:-0,8}" > "$WORK/logs/timing.out"
  local rc=$?
  cat "$WORK/logs/timing.out"
  for f in timing.json timing.md; do [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/$f"; done
  return "$rc"
}

snapshot() {  # snapshot DEST TAG: small outputs and logs, never weights or checkpoints
  local dest=$1 tmp="$1.$2.tmp" work=() results=() runs p
  runs=$(basename "${FERENS_RUNS_DIR:-$WORK/runs}")
  for p in logs markers timing.json timing.md "$runs"; do [ -e "$WORK/$p" ] && work+=("$p"); done
  [ -n "${RESULTS:-}" ] && [ -d "$REPO/$RESULTS" ] && results=(-C "$REPO" "$RESULTS")
  tar czf "$tmp" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.ckpt' \
    --exclude='checkpoint' --exclude='*.lock' --exclude='*.tmp*' --exclude='*.study.json' \
    --anchored --exclude="$runs/*/predictions" "${results[@]}" -C "$WORK" "${work[@]}" \
    2>/dev/null
  mv -f "$tmp" "$dest"
}

progress_loop() {  # a snapshot every 20 s until $WORK/stop-progress appears
  local n=0
  while [ ! -e "$WORK/stop-progress" ]; do
    sleep 1
    n=$((n + 1))
    [ $((n % 20)) = 0 ] && snapshot "$OUT/progress.tar.gz" bg
  done
}

train_stage() {  # train_stage [MEMBER...]
  local members=("$@") chosen rc hard
  [ -f "$MARK/data.ok" ] || { say "no verified data on this machine: the data stage failed"; return 1; }
  if [ ${#members[@]} = 0 ]; then
    # from the timing numbers; without them (the timing stage failed) the first unfinished
    # member, which the graceful deadline stops in time
    local among=()
    read -ra among <<< "${FERENS_GPU_MEMBERS:-}"
    chosen=$("$PY" "$TIMING" choose "$WORK/timing.json" --budget "$(left "$MEMBER_DEADLINE")" \
      --study "$RUN_STUDY" --md "$WORK/timing.md" --members "${among[@]}") || return 1
    for f in timing.json timing.md; do [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/$f"; done
    read -ra members <<< "$chosen"
    [ ${#members[@]} = 0 ] && { say "every member has finished: nothing to train"; return 0; }
  fi
  local only=() m
  for m in "${members[@]}"; do only+=(--only "$m"); done
  export FERENS_DEADLINE=$MEMBER_DEADLINE
  hard=$(( $(left "$END") - 15 ))
  say "training ${members[*]} from $RUN_STUDY: members stop by $(date -d "@$MEMBER_DEADLINE" +%H:%M:%S 2>/dev/null || echo "$MEMBER_DEADLINE"), hard stop in ${hard}s (results in $RESULTS)"
  [ "$hard" -gt 5 ] || { say "no time left to train"; return 1; }
  rm -f "$WORK/stop-progress"
  progress_loop &
  local progress=$!
  timeout -s TERM -k 15 "$hard" "$PY" -m ferens.cli study "$RUN_STUDY" "${only[@]}" 2>&1 \
    | tee -a "$WORK/logs/study.log"
  rc=${PIPESTATUS[0]}
  touch "$WORK/stop-progress"
  wait "$progress" 2>/dev/null
  for m in "${members[@]}"; do
    [ -f "$FERENS_RUNS_DIR/$m/metrics.csv" ] && { say "$m metrics.csv:"; cat "$FERENS_RUNS_DIR/$m/metrics.csv"; }
  done
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    local missing=()
    for m in "${members[@]}"; do [ -f "$FERENS_RUNS_DIR/$m/summary.json" ] || missing+=("$m"); done
    if [ ${#missing[@]} = 0 ]; then  # every member wrote its predictions; only the end was cut
      say "the hard stop ended the study (exit $rc) after every member had written its" \
          "predictions: its ensembles and report were cut short (rebuild them with" \
          "'ferens study ... --no-train' once the results are back)"
      touch "$MARK/report.cut"
      return 0
    fi
    say "the hard stop ended the study (exit $rc) before ${missing[*]} wrote a summary: the" \
        "graceful deadline was missed"
    return 15
  fi
  return "$rc"
}

finish() {  # finish CODE: the archive, the verdict, the exit code
  local code=$1 s
  snapshot "$OUT/$ARCHIVE" final
  rm -f "$OUT/progress.tar.gz" "$OUT"/*.tmp
  say "wrote $OUT/$ARCHIVE ($(du -h "$OUT/$ARCHIVE" | cut -f1))"
  if [ "$(stat -c %s "$OUT/$ARCHIVE")" -gt "$PIECE" ]; then  # the tool drops files over 16 MiB
    split -b "$PIECE" -d -a 1 "$OUT/$ARCHIVE" "$OUT/$ARCHIVE." && rm -f "$OUT/$ARCHIVE"
    say "split it into $(ls "$OUT/$ARCHIVE".* | wc -l) pieces of at most $PIECE bytes" \
        "($ARCHIVE.0, .1, ...; pack.py --import takes the first)"
  fi
  local verdict=""
  for s in env data tests timing train; do
    if [ -f "$MARK/$s.ok" ]; then verdict+=" $s=ok"; elif [ -f "$MARK/$s.failed" ]; then verdict+=" $s=FAILED"; fi
  done
  say "session $STAGE done after $(( $(date +%s) - START ))s:$verdict; exit $code"
  return "$code"
}

main() {
  say "stage $STAGE on $(hostname), repo $REPO, work $WORK, must exit by +${BUDGET}s"
  local code=0
  case "$STAGE" in
    all|train)
      study_setup || { say "cannot read or derive $STUDY"; finish 2; return; }
      if [ "$STAGE" = all ] || [ ! -f "$MARK/env.ok" ]; then
        run_stage env 10 env_stage || { finish 10; return; }
      fi
      run_stage data 11 data_stage || { finish 11; return; }
      if [ "$STAGE" = all ]; then
        run_stage tests 12 tests_stage || code=12
      fi
      if [ "$STAGE" = train ] && [ ! -f "$WORK/timing.json" ] \
          && [ "$(left "$MEMBER_DEADLINE")" -lt "$TIMING_MIN_LEFT" ]; then
        say "no timing numbers on this machine (a fresh one?) and under ${TIMING_MIN_LEFT} s" \
            "left: not timing; the first unfinished member trains, untimed"
      elif [ "$STAGE" = all ] || [ ! -f "$WORK/timing.json" ]; then
        # without numbers the train stage still trains the first member (deadline-safe)
        run_stage timing 13 timing_stage "$@" || code=13
      fi
      run_stage train 14 train_stage "$@"
      local rc=$?
      [ "$rc" != 0 ] && code=$rc
      finish "$code" ;;
    unpack)
      run_stage data 11 data_stage --partial-ok
      finish $? ;;
    *)
      say "usage: session.sh all|train|unpack [MEMBER...]"
      return 2 ;;
  esac
}

main "$@" 2>&1 | tee -a "$OUT/session.log"
exit "${PIPESTATUS[0]}"
