#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, libFuzzer + AddressSanitizer + UndefinedBehaviorSanitizer,
# CUDA off) in build-fuzz/ and runs each for SECONDS (default 60), one per core at a time (TTT_FUZZ_JOBS), from its
# committed seed corpus tests/fuzz/corpus/<target>/ (read only; new inputs go to build-fuzz/corpus/<target>/).
# A crash, sanitizer report, leak, allocation above 512 MB, RSS above 2 GB or input slower than 10 s fails the
# run; the input that did it is written to build-fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]      (default: every tests/fuzz/fuzz_*.cpp)
#        TTT_FUZZ_RUNS=N scripts/fuzz.sh SECONDS    (each target also stops after N executions)
#        scripts/fuzz.sh seeds                      (rewrite the seed corpora with the library's writers)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${TTT_FUZZ_BUILD_DIR:-build-fuzz}
SANITIZE="-fsanitize=address,undefined -fno-sanitize-recover=all"
mkdir -p "$BUILD_DIR"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DTTT_CXX_OPT=-O1 -DTTT_ENABLE_CUDA=OFF -DTTT_FUZZ=ON \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link $SANITIZE -fno-omit-frame-pointer -g1" \
  -DCMAKE_EXE_LINKER_FLAGS="$SANITIZE" > "$BUILD_DIR/configure.log" 2>&1 || { cat "$BUILD_DIR/configure.log"; exit 1; }
ALL_TARGETS=()
for f in tests/fuzz/fuzz_*.cpp; do ALL_TARGETS+=("$(basename "$f" .cpp)"); done

if [ "${1:-}" = "seeds" ]; then
  cmake --build "$BUILD_DIR" -j "$(nproc)" --target fuzz_make_seeds
  "$BUILD_DIR/fuzz_make_seeds" tests/fuzz/corpus
  exit 0
fi
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
cmake --build "$BUILD_DIR" -j "$(nproc)" --target "${TARGETS[@]}"

export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1"
export UBSAN_OPTIONS="abort_on_error=1:halt_on_error=1:print_stacktrace=1"
# One target per core at a time (each is one process; 60 s each, five targets: 3 min on 2 cores instead of 5).
fuzz_one() {
  local t=$1 work="$BUILD_DIR/corpus/$1" artifacts="$BUILD_DIR/artifacts/$1"
  mkdir -p "$work" "$artifacts"
  local extra=()
  [ -f "tests/fuzz/$t.dict" ] && extra+=("-dict=tests/fuzz/$t.dict")
  [ -n "${TTT_FUZZ_RUNS:-}" ] && extra+=("-runs=$TTT_FUZZ_RUNS")
  "$BUILD_DIR/$t" "$work" "tests/fuzz/corpus/$t" "${extra[@]}" -max_total_time="$SECONDS_PER_TARGET" \
    -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts/" \
    > "$BUILD_DIR/$t.log" 2>&1
}
JOBS=${TTT_FUZZ_JOBS:-$(nproc)}
declare -A pid_of=()
failed=()
report() {  # the target's stats, or its log's tail and a failure
  local t=$1 rc=$2
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$BUILD_DIR/$t.log"
    echo "fuzz: $t FAILED (log $BUILD_DIR/$t.log)"
    failed+=("$t")
    return
  fi
  grep -E "^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)" "$BUILD_DIR/$t.log" | sed "s/^/fuzz: $t /"
  grep -E "^#[0-9]+[[:space:]]+DONE" "$BUILD_DIR/$t.log" | sed "s/^/fuzz: $t /" || true
}
running=()
for t in "${TARGETS[@]}"; do
  while [ ${#running[@]} -ge "$JOBS" ]; do  # wait for the oldest
    first=${running[0]}
    running=("${running[@]:1}")
    rc=0; wait "${pid_of[$first]}" || rc=$?
    report "$first" "$rc"
  done
  echo "fuzz: $t for ${SECONDS_PER_TARGET} s"
  fuzz_one "$t" &
  pid_of[$t]=$!
  running+=("$t")
done
for t in "${running[@]}"; do
  rc=0; wait "${pid_of[$t]}" || rc=$?
  report "$t" "$rc"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: $(( ${#TARGETS[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: each target ran up to ${SECONDS_PER_TARGET} s${TTT_FUZZ_RUNS:+ or $TTT_FUZZ_RUNS runs} without a crash"
echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
