#!/bin/bash
# The public LaCT model's training step and ttt's, in one process tree on one GPU: prints both and the ratio.
# With --op, first the operators alone: `ttt bench op --device cuda --precision bf16` beside the public
# block_causal_lact_swiglu (bench/public_lact_op.py) at the same shape (b*H 4, T 32768, d = dh = 384, chunk 2048).
#
#   bench/side_by_side.sh --lact-repo DIR [--wheels DIR] [--ttt PATH] [--preset 760m|3b] [--seq-len N]
#                         [--grad-checkpoint] [--op] [--no-step] [--public-operator public|ttt|both]
#                         [--capi-lib PATH] [-- extra flags for ttt bench step]
#
# --lact-repo  a checkout of github a1600012888/LaCT (never part of ttt; bring your own)
# --wheels     a directory of wheels to install first into a temporary target (fla-core and
#              flash-linear-attention 0.6.0 where the machine lacks them); installed with --no-index --no-deps
# --ttt        the ttt binary (default: build/ttt)
# --public-operator  the public model's LaCT operator: its own (default), ttt_torch.ops.lact_swiglu (`ttt`), or
#              `both`: the public model's step with each, in one process (needs --capi-lib, a CUDA build's
#              libttt_capi.so, or TTT_CAPI_LIB)
# flash_attn is replaced by bench/flash_attn_standin (flex_attention with a sliding-window block mask).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lact_repo="" wheels="" ttt="$here/../build/ttt" preset=760m seq_len=32768 ckpt="" op=0 step=1 extra=() pub_op=public capi=()
while [ $# -gt 0 ]; do
  case "$1" in
    --lact-repo) lact_repo=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    --ttt) ttt=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    --seq-len) seq_len=$2; shift 2 ;;
    --grad-checkpoint) ckpt=--grad-checkpoint; shift ;;
    --op) op=1; shift ;;
    --no-step) step=0; shift ;;
    --public-operator) pub_op=$2; shift 2 ;;
    --capi-lib) capi=(--capi-lib "$2"); shift 2 ;;
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
if [ $op = 1 ]; then
  echo "== operators: ttt bench op --precision bf16, then the public block_causal_lact_swiglu" >&2
  "$ttt" bench op --device cuda --precision bf16 --repeats 10 --warmup 3 > "$out/ttt_op.json"
  python3 "$here/public_lact_op.py" --lact-repo "$lact_repo" > "$out/public_op.json"
  cat "$out/ttt_op.json" "$out/public_op.json"
  python3 - "$out/ttt_op.json" "$out/public_op.json" <<'PY'
import json, sys
t = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
p = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
tf, tfb = t["fwd_s"] * 1e3, t["fwdbwd_s"] * 1e3
print(f"op ttt:    fwd {tf:8.3f} ms  fwd+bwd {tfb:8.3f} ms")
print(f"op public: fwd {p['fwd_ms']:8.3f} ms  fwd+bwd {p['fwdbwd_ms']:8.3f} ms (torch.compile)")
print(f"op ratio:  fwd {p['fwd_ms'] / tf:.2f}x, fwd+bwd {p['fwdbwd_ms'] / tfb:.2f}x")
PY
fi
[ $step = 1 ] || exit 0
echo "== ttt bench step --preset $preset (T = $seq_len)" >&2
"$ttt" bench step --device cuda --preset "$preset" --seq-len "$seq_len" --precision bf16 --repeats 3 --warmup 1 \
  "${extra[@]}" > "$out/ttt.json"
cat "$out/ttt.json"
echo "== public LaCT model ($preset config, T = $seq_len)" >&2
# (what it printed is shown and compared even when a later part fails: with --public-operator both, the public
# operator's line comes first)
status=0
python3 "$here/public_lact_step.py" --lact-repo "$lact_repo" --preset "$preset" --seq-len "$seq_len" $ckpt \
  --operator "$pub_op" "${capi[@]}" > "$out/public.json" || status=$?
cat "$out/public.json"
[ -s "$out/public.json" ] || exit $((status ? status : 1))
python3 - "$out/ttt.json" "$out/public.json" <<'PY'
import json, sys
t = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
lines = [json.loads(l) for l in open(sys.argv[2]).read().strip().splitlines() if l.startswith("{")]
by_op = {l.get("operator", "public"): l for l in lines}
tb = t.get("tracked_peak_bytes", 0)
print(f"ttt:    {t['step_ms_median']:9.1f} ms  {t['tokens_per_s']:10.0f} tokens/s  peak {tb / 1e9:6.1f} GB (tracked)")
for op, p in by_op.items():
    name = "public" if op == "public" else "public model, ttt's operator"
    print(f"{name}: {p['step_ms_median']:9.1f} ms  {p['tokens_per_s']:10.0f} tokens/s  peak {p['peak_bytes'] / 1e9:6.1f} GB (allocated)")
if "public" in by_op:
    print(f"ratio:  ttt is {by_op['public']['step_ms_median'] / t['step_ms_median']:.2f}x the public model's speed")
if "public" in by_op and "ttt" in by_op:
    print(f"operator swap: the public model's step with ttt's operator is "
          f"{by_op['public']['step_ms_median'] / by_op['ttt']['step_ms_median']:.2f}x its speed with its own")
PY
exit $status
