#!/bin/bash
# The public LaCT model's training step and ttt's, in one process tree on one GPU: prints both and the ratio.
#
#   bench/side_by_side.sh --lact-repo DIR [--wheels DIR] [--ttt PATH] [--preset 760m|3b] [--seq-len N]
#                         [--grad-checkpoint] [-- extra flags for ttt bench step]
#
# --lact-repo  a checkout of github a1600012888/LaCT (never part of ttt; bring your own)
# --wheels     a directory of wheels to install first into a temporary target (fla-core and
#              flash-linear-attention 0.6.0 where the machine lacks them); installed with --no-index --no-deps
# --ttt        the ttt binary (default: build/ttt)
# flash_attn is replaced by bench/flash_attn_standin (flex_attention with a sliding-window block mask).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lact_repo="" wheels="" ttt="$here/../build/ttt" preset=760m seq_len=32768 ckpt="" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --lact-repo) lact_repo=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    --ttt) ttt=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    --seq-len) seq_len=$2; shift 2 ;;
    --grad-checkpoint) ckpt=--grad-checkpoint; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "side_by_side.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$lact_repo" ] || { echo "side_by_side.sh: --lact-repo DIR is required" >&2; exit 2; }
[ -x "$ttt" ] || { echo "side_by_side.sh: no ttt binary at $ttt (--ttt PATH)" >&2; exit 2; }
if [ -n "$wheels" ]; then
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
out=$(mktemp -d)
echo "== ttt bench step --preset $preset (T = $seq_len)" >&2
"$ttt" bench step --device cuda --preset "$preset" --seq-len "$seq_len" --precision bf16 --repeats 3 --warmup 1 \
  "${extra[@]}" > "$out/ttt.json"
cat "$out/ttt.json"
echo "== public LaCT model ($preset config, T = $seq_len)" >&2
python3 "$here/public_lact_step.py" --lact-repo "$lact_repo" --preset "$preset" --seq-len "$seq_len" $ckpt \
  > "$out/public.json"
cat "$out/public.json"
python3 - "$out/ttt.json" "$out/public.json" <<'PY'
import json, sys
t = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
p = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
tb = t.get("tracked_peak_bytes", 0)
print(f"ttt:    {t['step_ms_median']:9.1f} ms  {t['tokens_per_s']:10.0f} tokens/s  peak {tb / 1e9:6.1f} GB (tracked)")
print(f"public: {p['step_ms_median']:9.1f} ms  {p['tokens_per_s']:10.0f} tokens/s  peak {p['peak_bytes'] / 1e9:6.1f} GB (allocated)")
print(f"ratio:  ttt is {p['step_ms_median'] / t['step_ms_median']:.2f}x the public model's speed")
PY
