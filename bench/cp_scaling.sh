#!/usr/bin/env bash
# TNT context parallelism on the GPU (docs/CONTEXT_PARALLEL.md): one training step of the 87M TNT config on one
# sequence, one GPU against two GPUs with --context-parallel 2 (tokens/s and their ratio), then a sequence too long
# for one GPU's memory estimate (the one-GPU run is refused by the memory check, which says so) on two GPUs.
#
#   bench/cp_scaling.sh [path/to/ttt]        (or TTT=path/to/ttt; default build/ttt)
#
# Needs a CUDA build and two GPUs on this machine. Two ranks start under mpirun when it exists, else torchrun-style
# (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT: the TCP bootstrap of src/dist). NVLink multicast is off
# (NCCL_NVLS_ENABLE=0). Each run is `ttt bench step` (warm-up steps first, then the median of the timed steps); a
# failing run prints its exit status and the end of its output, and the script goes on.
# Settings (environment): CONFIG (bench/configs/tnt87m_l8.json; window, shard and global_chunk must divide the spans),
# SEQ (131072), LONG (786432), REPEATS (3), WARMUP (1), PRECISION (the engine's default when empty), MASTER_PORT.
set -u

TTT=${1:-${TTT:-build/ttt}}
CONFIG=${CONFIG:-bench/configs/tnt87m_l8.json}
SEQ=${SEQ:-131072}
LONG=${LONG:-786432}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-1}
PRECISION=${PRECISION:-}
PORT=${MASTER_PORT:-29533}
export NCCL_NVLS_ENABLE=0

if [ ! -x "$TTT" ]; then
  echo "cp_scaling: no ttt binary at '$TTT' (give its path as the first argument or in TTT)" >&2
  exit 2
fi
LOGS=$(mktemp -d /tmp/cp_scaling.XXXXXX)
echo "cp_scaling: $TTT, config $CONFIG, logs in $LOGS"
nvidia-smi -L 2>/dev/null | sed 's/^/  /'

EXTRA=()
[ -n "$PRECISION" ] && EXTRA+=(--precision "$PRECISION")

# field JSON_FILE KEY: a number of the bench's JSON line ("" when absent).
field() { sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" "$1" | head -1; }

# run LABEL RANKS SEQ_LEN [FLAGS...]: one bench step run; prints its line; leaves its JSON in $LOGS/LABEL.json.
run() {
  local label=$1 ranks=$2 seq=$3
  shift 3
  local args=(bench step --config "$CONFIG" --device cuda --seq-len "$seq" --batch 1 --repeats "$REPEATS"
              --warmup "$WARMUP" ${EXTRA[@]+"${EXTRA[@]}"} "$@")
  local out="$LOGS/$label.json" err="$LOGS/$label.log" rc
  if [ "$ranks" -eq 1 ]; then
    "$TTT" "${args[@]}" > "$out" 2> "$err"
    rc=$?
  elif command -v mpirun > /dev/null 2>&1; then
    # OpenMPI refuses to start as root unless told (containers often run as root).
    local as_root=()
    [ "$(id -u)" -eq 0 ] && as_root=(--allow-run-as-root)
    mpirun ${as_root[@]+"${as_root[@]}"} -np "$ranks" --bind-to none -x NCCL_NVLS_ENABLE "$TTT" "${args[@]}" > "$out" 2> "$err"
    rc=$?
  else
    local pids=() r
    for ((r = 1; r < ranks; r++)); do
      RANK=$r LOCAL_RANK=$r WORLD_SIZE=$ranks MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT \
        "$TTT" "${args[@]}" > "$LOGS/$label.rank$r.log" 2>&1 &
      pids+=($!)
    done
    RANK=0 LOCAL_RANK=0 WORLD_SIZE=$ranks MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT "$TTT" "${args[@]}" > "$out" 2> "$err"
    rc=$?
    for r in "${pids[@]}"; do wait "$r" || { [ "$rc" -eq 0 ] && rc=1; }; done
    PORT=$((PORT + 1))
  fi
  if [ "$rc" -ne 0 ] || [ -z "$(field "$out" tokens_per_s)" ]; then
    printf '%-28s FAILED (exit %s); the end of its output:\n' "$label" "$rc"
    tail -n 6 "$err" | sed 's/^/    /'
    return 1
  fi
  printf '%-28s %9.0f tokens/s  step %9.1f ms  memory estimate %6.1f GB  tracked peak %6.1f GB\n' "$label" \
    "$(field "$out" tokens_per_s)" "$(field "$out" step_ms_median)" \
    "$(awk -v b="$(field "$out" memory_estimate_bytes)" 'BEGIN { print b / 1e9 }')" \
    "$(awk -v b="$(field "$out" tracked_peak_bytes)" 'BEGIN { print b / 1e9 }')"
}

echo
echo "== one sequence of $SEQ tokens =="
run "1 GPU, seq $SEQ" 1 "$SEQ"
one=$?
run "2 GPUs CP 2, seq $SEQ" 2 "$SEQ" --context-parallel 2
two=$?
if [ "$one" -eq 0 ] && [ "$two" -eq 0 ]; then
  awk -v a="$(field "$LOGS/1 GPU, seq $SEQ.json" tokens_per_s)" -v b="$(field "$LOGS/2 GPUs CP 2, seq $SEQ.json" tokens_per_s)" \
    'BEGIN { printf "speed-up of 2 GPUs (CP 2) over 1 GPU: %.2fx\n", b / a }'
else
  echo "speed-up: not measured (a run failed)"
fi

echo
echo "== one sequence of $LONG tokens: beyond one GPU's memory estimate =="
if run "1 GPU, seq $LONG" 1 "$LONG"; then
  echo "  (one GPU ran it: raise LONG for a length beyond one GPU)"
elif grep -q "not enough GPU memory" "$LOGS/1 GPU, seq $LONG.log"; then
  echo "  (refused by the memory check before allocating, as expected:)"
  grep -m1 "not enough GPU memory" "$LOGS/1 GPU, seq $LONG.log" | sed 's/^/    /'
fi
run "2 GPUs CP 2, seq $LONG" 2 "$LONG" --context-parallel 2
