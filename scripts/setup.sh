#!/usr/bin/env bash
# Installs the build's Debian packages (idempotent), configures and builds in Release.
# Usage: scripts/setup.sh            (set TTT_BUILD_DIR to change the build folder, default build/)
set -euo pipefail
cd "$(dirname "$0")/.."
# python3-torch: the independent float64 PyTorch references that tests/reference/ compares against, and the
# python/ttt_torch package's tests (tests/python; the system Python's torch, no PyPI download).
# libicu-dev: Unicode classes of the BPE tokenizer; libsentencepiece-dev: SentencePiece tokenizers (optional for the
# build); sentencepiece (spm_train) and the PyPI package tokenizers (below): the tokenizer tests' references.
# clang, libclang-rt-14-dev (libFuzzer, sanitizer runtimes), libomp-14-dev (OpenMP for clang): the fuzz
# targets (scripts/fuzz.sh); gcc's sanitizer runtimes (scripts/sanitize.sh) come with build-essential.
# openmpi-bin, libopenmpi-dev: multi-process training (`mpirun -np N ttt train`, src/dist) and its tests.
PKGS=(build-essential cmake pkg-config libopenblas-openmp-dev nlohmann-json3-dev libgtest-dev zlib1g-dev linux-doc python3-torch
      libicu-dev libsentencepiece-dev sentencepiece python3-pip clang libclang-rt-14-dev libomp-14-dev openmpi-bin
      libopenmpi-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The tokenizer tests compare against Hugging Face's tokenizers (tests only; they skip, saying so, without it).
if ! python3 -c "import tokenizers" 2>/dev/null; then
  echo "setup: installing the Python package tokenizers (tests only)"
  python3 -m pip install --quiet tokenizers 2>/dev/null || python3 -m pip install --quiet --break-system-packages tokenizers ||
    echo "setup: warning: could not install the Python package tokenizers; the tokenizer tests will skip" >&2
fi
BUILD_DIR=${TTT_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)"
# Default corpus (byte-level tokens of the Linux kernel documentation, ~40 MB, a few seconds): prepared
# once into data/linux-doc/ (git-ignored). Set TTT_SKIP_CORPUS=1 to skip.
if [ "${TTT_SKIP_CORPUS:-0}" != "1" ] && [ ! -f data/linux-doc/train.bin ]; then
  DOC_DIR=$(ls -d /usr/share/doc/linux-doc-*/Documentation 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$DOC_DIR" ] && [ -d "$DOC_DIR" ]; then
    echo "setup: preparing the default corpus from $DOC_DIR"
    "$BUILD_DIR/ttt" prepare --input "$DOC_DIR" --out data/linux-doc
  else
    echo "setup: warning: no /usr/share/doc/linux-doc-*/Documentation found; default corpus not prepared" >&2
  fi
fi
