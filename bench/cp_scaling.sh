#!/usr/bin/env bash
# TNT context parallelism on the GPU (docs/CONTEXT_PARALLEL.md): one training step of the 87M TNT config on one
# sequence, one GPU against two GPUs with --context-parallel 2 for each way the global memory crosses the spans
# (--cp-global gather | state: tokens/s and their ratio), then a sequence too long for one GPU's memory estimate
# (the one-GPU run is refused by the memory check, which says so) on two GPUs; then (LIMIT=1) the longest sequence
# one GPU accepts (the memory check alone, `ttt bench step --estimate-only`, over multiples of 4096), a step at it on
# one GPU, and a step at twice it on two GPUs with --cp-global state.
#
#   bench/cp_scaling.sh [path/to/ttt]        (or TTT=path/to/ttt; default build/ttt)
#   CP_GLOBAL=state bench/cp_scaling.sh      (one way only; default: "gather state", both)
#
# Needs a CUDA build and two GPUs on this machine. Two ranks start under mpirun when it exists, else torchrun-style
# (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT: the TCP bootstrap of src/dist). NVLink multicast is off
# (NCCL_NVLS_ENABLE=0). Each run is `ttt bench step` (warm-up steps first, then the median of the timed steps); a
# failing run prints its exit status and the end of its output, and the script goes on.
# Settings (environment): CONFIG (bench/configs/tnt87m_l8.json; window, shard and global_chunk must divide the spans),
# SEQ (131072), LONG (786432), REPEATS (3), WARMUP (1), PRECISION (the engine's default when empty), MASTER_PORT,
# CP_GLOBAL ("gather state"), LIMIT (1: search one GPU's longest sequence and run twice it on two; 0: skip).
# SEQ=0 or LONG=0 skips that part (each part fits a 10-minute call on its own).
set -u

TTT=${1:-${TTT:-build/ttt}}
CONFIG=${CONFIG:-bench/configs/tnt87m_l8.json}
SEQ=${SEQ:-131072}
LONG=${LONG:-786432}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-1}
PRECISION=${PRECISION:-}
PORT=${MASTER_PORT:-29533}
CP_GLOBAL=${CP_GLOBAL:-gather state}
LIMIT=${LIMIT:-1}
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

if [ "$SEQ" != "0" ]; then
echo
echo "== one sequence of $SEQ tokens =="
run "1 GPU, seq $SEQ" 1 "$SEQ"
one=$?
for mode in $CP_GLOBAL; do
  label="2 GPUs CP 2 $mode, seq $SEQ"
  if run "$label" 2 "$SEQ" --context-parallel 2 --cp-global "$mode" && [ "$one" -eq 0 ]; then
    awk -v a="$(field "$LOGS/1 GPU, seq $SEQ.json" tokens_per_s)" -v b="$(field "$LOGS/$label.json" tokens_per_s)" \
      -v m="$mode" 'BEGIN { printf "speed-up of 2 GPUs (CP 2, --cp-global %s) over 1 GPU: %.2fx\n", m, b / a }'
  else
    echo "speed-up (--cp-global $mode): not measured (a run failed)"
  fi
done
fi

if [ "$LONG" != "0" ]; then
echo
echo "== one sequence of $LONG tokens: beyond one GPU's memory estimate =="
if run "1 GPU, seq $LONG" 1 "$LONG"; then
  echo "  (one GPU ran it: raise LONG for a length beyond one GPU)"
elif grep -q "not enough GPU memory" "$LOGS/1 GPU, seq $LONG.log"; then
  echo "  (refused by the memory check before allocating, as expected:)"
  grep -m1 "not enough GPU memory" "$LOGS/1 GPU, seq $LONG.log" | sed 's/^/    /'
fi
for mode in $CP_GLOBAL; do run "2 GPUs CP 2 $mode, seq $LONG" 2 "$LONG" --context-parallel 2 --cp-global "$mode"; done
fi

[ "$LIMIT" = "1" ] || exit 0
echo
echo "== the longest sequence one GPU accepts (the memory check alone), and twice it on two GPUs =="
# fits SEQ_LEN: whether one GPU's memory check accepts one sequence of SEQ_LEN tokens (nothing is allocated).
fits() {
  "$TTT" bench step --config "$CONFIG" --device cuda --seq-len "$1" --batch 1 ${EXTRA[@]+"${EXTRA[@]}"} --estimate-only \
    > "$LOGS/estimate_$1.json" 2> "$LOGS/estimate_$1.log"
}
# Multiples of 4096 (twice one is a length two ranks split into spans of whole 2048-token shards and chunks):
# doubling from 131072 to the first refusal, then bisection.
step=4096
start=131072  # where the search starts: a length one GPU holds
lo=$((start / step))
if ! fits $((lo * step)); then
  echo "one GPU refuses even $start tokens:"; tail -n 3 "$LOGS/estimate_$((lo * step)).log" | sed 's/^/    /'; exit 1
fi
hi=$((2 * lo))
while fits $((hi * step)); do lo=$hi; hi=$((2 * hi)); done
while [ $((hi - lo)) -gt 1 ]; do
  mid=$(((lo + hi) / 2))
  if fits $((mid * step)); then lo=$mid; else hi=$mid; fi
done
limit=$((lo * step))
printf 'one GPU accepts up to %d tokens (estimate %.1f GB); %d is refused:\n' "$limit" \
  "$(awk -v b="$(field "$LOGS/estimate_$limit.json" memory_estimate_bytes)" 'BEGIN { print b / 1e9 }')" $((hi * step))
grep -m1 "not enough GPU memory" "$LOGS/estimate_$((hi * step)).log" | sed 's/^/    /'
run "1 GPU, seq $limit (limit)" 1 "$limit"
run "2 GPUs CP 2 state, seq $((2 * limit))" 2 $((2 * limit)) --context-parallel 2 --cp-global state
