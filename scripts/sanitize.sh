#!/usr/bin/env bash
# Builds the library, the CLI and the test suite with AddressSanitizer + UndefinedBehaviorSanitizer (gcc,
# CUDA off) in build-asan/ and runs every test. Any sanitizer report fails the run: reports are fatal
# (-fno-sanitize-recover=all, halt and abort on the first error, in the tests and in the `ttt` processes they
# start), and ctest also fails a test whose output holds a sanitizer report (FAIL_REGULAR_EXPRESSION,
# CMakeLists.txt). Usage: scripts/sanitize.sh   (TTT_ASAN_BUILD_DIR changes the build folder)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${TTT_ASAN_BUILD_DIR:-build-asan}
SANITIZE="-fsanitize=address,undefined -fno-sanitize-recover=all"
# MPI off: OpenMPI's plugins leak at MPI_Finalize from modules it has unloaded ("<unknown module>" frames that no
# suppression can name). The multi-process code still runs here through the TCP communicator (tests DistTcp.*);
# the mpirun tests run in scripts/test.sh.
# No libttt_capi.so (TTT_BUILD_CAPI off): an instrumented library cannot be loaded into the uninstrumented Python
# of the ttt_torch.ops test, which is then skipped here (its C ABI is still tested: CApi.* in ttt_tests).
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DTTT_CXX_OPT=-O1 -DTTT_ENABLE_CUDA=OFF -DTTT_ENABLE_MPI=OFF -DTTT_BUILD_CAPI=OFF \
  -DCMAKE_CXX_FLAGS="$SANITIZE -fno-omit-frame-pointer -g1" -DCMAKE_EXE_LINKER_FLAGS="$SANITIZE"
cmake --build "$BUILD_DIR" -j "$(nproc)"
# abort_on_error: a report ends the process with SIGABRT, so a `ttt` child that hits one can never pass for a
# clean error exit in the CLI error tests. LeakSanitizer runs at exit (detect_leaks); scripts/lsan.supp lists
# the only leaks not ours.
export ASAN_OPTIONS="abort_on_error=1:halt_on_error=1:detect_leaks=1:check_initialization_order=1"
export UBSAN_OPTIONS="abort_on_error=1:halt_on_error=1:print_stacktrace=1"
export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp:print_suppressions=0"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)"
