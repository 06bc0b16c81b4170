#!/usr/bin/env bash
# GPU benchmark of the LaCT memory operator (docs/ALGORITHMS.md §5.5): the CUDA backend of ttt
# (`ttt bench op --device cuda`) against the same op in PyTorch (bench/lact_torch.py), eager and under
# torch.compile, at b*H = 4, T = 32768, C = 2048, momentum on: d = dh = 384 with Muon off and on, d = dh = 768
# with Muon; plus ttt's forward+backward over 1M tokens (b*H = 4, d = dh = 384, C = 2048). fp32 by default
# (TF32 off in both); with bf16 rows (ttt --precision bf16; torch with bf16 matmul operands, fp32 state:
# lact_torch.py's mm_dtype) compared like-for-like. Every timing is the median of CUDA-event timed repetitions
# after warm-up runs, each mode warmed up separately.
#
# Usage: bench/run_gpu_lact.sh            (env: TTT = the ttt binary, default build-cuda/ttt;
#                                           TTT_LIBS = extra library dir for it; OUT = output dir;
#                                           BUDGET_S = seconds this script may take, default 480;
#                                           TTT_TF32=0 skips ttt's TF32 rows, TTT_BF16=0 its bf16 rows;
#                                           TTT_1M=0 skips the 1M-token row; TORCH_RUNS = space-separated
#                                           mode:d:muon:math:timeout_s with math 0 (fp32), 1 (tf32) or bf16,
#                                           default below, most wanted first: torch.compile of a Muon row
#                                           needs more than 240 s to warm up on an H100)
# ttt's operator replays CUDA graphs of its forward / backward after the first call (TTT_LACT_GRAPH=0: off).
# Writes JSON lines to $OUT/bench_ttt.jsonl and $OUT/bench_torch.jsonl, logs to $OUT/*.log, and prints a
# table last.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TTT=${TTT:-$ROOT/build-cuda/ttt}
OUTDIR=${OUT:-$ROOT/gpu_lact_out}
BUDGET_S=${BUDGET_S:-480}
START=$(date +%s)
mkdir -p "$OUTDIR"
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# cuBLAS for the ttt binary: the toolkit's, or failing that any libcublas.so.13 on the machine.
CUBLAS_DIR=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -e "$d/libcublas.so.13" ] && CUBLAS_DIR=$d && break
done
if [ -z "$CUBLAS_DIR" ]; then
  f=$(find / -name 'libcublas.so.13' -not -path '/proc/*' 2>/dev/null | head -1)
  [ -n "$f" ] && CUBLAS_DIR=$(dirname "$f")
fi
echo "ttt: $TTT; cublas: ${CUBLAS_DIR:-not found}; out: $OUTDIR; budget ${BUDGET_S}s"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv,noheader 2>/dev/null
run_ttt() { LD_LIBRARY_PATH="${TTT_LIBS:-}:${CUBLAS_DIR}:${LD_LIBRARY_PATH:-}" "$TTT" "$@"; }

# ---- ttt (CUDA) ------------------------------------------------------------------------------------------
: >"$OUTDIR/bench_ttt.jsonl"
bench_ttt() {  # extra flags...
  echo "== ttt bench op --device cuda $*"
  run_ttt bench op --device cuda --bh 4 --chunk 2048 "$@" >>"$OUTDIR/bench_ttt.jsonl" 2>>"$OUTDIR/bench_ttt.log" ||
    echo "ttt bench failed: $* (see bench_ttt.log)" | tee -a "$OUTDIR/bench_ttt.log"
}
bench_ttt --T 32768 --d 384 --dh 384 --repeats 7 --warmup 2
bench_ttt --T 32768 --d 384 --dh 384 --muon --repeats 7 --warmup 2
bench_ttt --T 32768 --d 768 --dh 768 --muon --repeats 5 --warmup 2
[ "${TTT_1M:-1}" != 0 ] && bench_ttt --T 1048576 --d 384 --dh 384 --repeats 3 --warmup 1
# TF32 tensor-core products (an option; not the default): the same three shapes.
if [ "${TTT_TF32:-1}" != 0 ]; then
  bench_ttt --T 32768 --d 384 --dh 384 --tf32 --repeats 7 --warmup 2
  bench_ttt --T 32768 --d 384 --dh 384 --muon --tf32 --repeats 7 --warmup 2
  bench_ttt --T 32768 --d 768 --dh 768 --muon --tf32 --repeats 5 --warmup 2
fi
# bf16 matrix inputs, fp32 accumulation and state (issue 5's precision contract); Muon is not offered in bf16.
if [ "${TTT_BF16:-1}" != 0 ]; then
  bench_ttt --T 32768 --d 384 --dh 384 --precision bf16 --repeats 7 --warmup 2
fi

# ---- PyTorch (eager, torch.compile) ----------------------------------------------------------------------
PYBENCH=$(mktemp /tmp/lact_torch_bench.XXXXXX.py)
cat >"$PYBENCH" <<'PY'
import json, sys, time
import torch
sys.path.insert(0, sys.argv[1])
import lact_torch as L

mode, d, muon, math, out = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5], sys.argv[6]
tf32, bf16 = math == "1", math == "bf16"
B, T, C = 4, 32768, 2048
torch.backends.cuda.matmul.allow_tf32 = tf32
torch.backends.cudnn.allow_tf32 = tf32
torch.set_float32_matmul_precision("high" if tf32 else "highest")
dev = "cuda"
g = torch.Generator(device=dev).manual_seed(0)
def normal(*s, scale): return torch.randn(*s, generator=g, device=dev) * scale
def uniform(lo, hi, *s): return lo + (hi - lo) * torch.rand(*s, generator=g, device=dev)
# The distributions of `ttt bench op`.
x = {"w0": normal(B, d, d, scale=d ** -0.5), "w1": normal(B, d, d, scale=d ** -0.5),
     "w2": normal(B, d, d, scale=d ** -0.5), "q": normal(B, T, d, scale=d ** -0.5),
     "k": normal(B, T, d, scale=d ** -0.5), "v": normal(B, T, d, scale=d ** -0.5),
     "lr0": uniform(0.001, 0.01, B, T), "lr1": uniform(0.001, 0.01, B, T), "lr2": uniform(0.001, 0.01, B, T),
     "momentum": uniform(0.5, 0.95, B, T)}
go = normal(B, T, d, scale=1.0)
opts = dict(chunk=C, program="causal", weight_norm="post", muon=muon, mm_dtype=torch.bfloat16 if bf16 else None)
f = torch.compile(L.lact_forward, dynamic=False) if mode == "compile" else L.lact_forward

def fwd():
    with torch.no_grad():
        return f(**x, **opts)
def fwdbwd():
    leaves = {n: t.detach().requires_grad_(True) for n, t in x.items()}
    o = f(**leaves, **opts)
    return torch.autograd.grad(o, list(leaves.values()), grad_outputs=go)

def timed(fn, warmup, repeats):
    t0 = time.time()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    warm_s = time.time() - t0
    ms = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        ms.append(a.elapsed_time(b))
    return sorted(ms)[len(ms) // 2], ms, warm_s

rec = {"impl": "torch_" + mode, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
       "math": "bf16" if bf16 else "tf32" if tf32 else "fp32", "bh": B, "T": T, "d": d, "dh": d, "chunk": C, "momentum": True,
       "muon": muon, "weight_norm": "post"}
reps = 7 if d <= 384 else 5
torch.cuda.reset_peak_memory_stats()
rec["fwd_ms"], rec["fwd_ms_all"], rec["fwd_warmup_s"] = timed(fwd, 2, reps)
rec["fwd_peak_bytes"] = torch.cuda.max_memory_allocated()
torch.cuda.reset_peak_memory_stats()
rec["fwdbwd_ms"], rec["fwdbwd_ms_all"], rec["fwdbwd_warmup_s"] = timed(fwdbwd, 2, reps)
rec["fwdbwd_peak_bytes"] = torch.cuda.max_memory_allocated()
with open(out, "a") as fh:
    fh.write(json.dumps(rec) + "\n")
print(json.dumps({k: rec[k] for k in ("impl", "math", "d", "muon", "fwd_ms", "fwdbwd_ms")}))
PY
: >"$OUTDIR/bench_torch.jsonl"
bench_torch() {  # mode d muon math(0|1|bf16) timeout
  local t=$5
  [ "$(left)" -lt 30 ] && { echo "skip torch $1 d=$2 muon=$3 math=$4: out of time budget"; return; }
  [ "$(left)" -lt "$t" ] && t=$(left)
  echo "== torch $1 d=$2 muon=$3 math=$4 (timeout ${t}s)"
  PYTHONUNBUFFERED=1 timeout "$t" python3 "$PYBENCH" "$ROOT/bench" "$1" "$2" "$3" "$4" "$OUTDIR/bench_torch.jsonl" \
    >>"$OUTDIR/bench_torch.log" 2>&1 || echo "torch $1 d=$2 muon=$3 math=$4 failed or timed out (see bench_torch.log)" |
    tee -a "$OUTDIR/bench_torch.log"
}
RUNS=${TORCH_RUNS:-"compile:384:0:bf16:200 eager:384:0:bf16:90 compile:384:0:1:200 compile:384:0:0:240
  eager:384:0:0:120 eager:384:1:0:120 eager:768:1:0:150 eager:384:0:1:90 eager:384:1:1:90 eager:768:1:1:150
  compile:384:1:0:300 compile:768:1:0:300"}
for r in $RUNS; do
  IFS=: read -r m dd mu tf to <<<"$r"
  bench_torch "$m" "$dd" "$mu" "$tf" "$to"
done

# ---- table -----------------------------------------------------------------------------------------------
python3 - "$OUTDIR" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p) if l.strip().startswith("{")] if os.path.exists(p) else []
ours, torch_ = load("bench_ttt.jsonl"), load("bench_torch.jsonl")
key = lambda r: (r["T"], r["d"], bool(r["muon"]), r.get("math", "fp32"))
tor = {}
for r in torch_:
    tor.setdefault(key(r), {})[r["impl"]] = r
print("\nLaCT op, b*H=4, C=2048, momentum on, post weight norm; medians (ms); ratio = torch / ttt")
print(f"{'T':>8} {'d':>4} {'muon':>5} {'math':>5} | {'ttt fwd':>9} {'eager':>9} {'compile':>9} | "
      f"{'ttt f+b':>9} {'eager':>9} {'compile':>9} | {'x eager f/fb':>11} {'x comp f/fb':>11} | ttt peak GB")
for r in ours:
    t = tor.get(key(r), {})
    fw, fb = r["fwd_s"] * 1e3, r["fwdbwd_s"] * 1e3
    e, c = t.get("torch_eager", {}), t.get("torch_compile", {})
    def g(x, k): return f"{x[k]:9.2f}" if k in x else f"{'-':>9}"
    def ratio(x, k, ours):
        return f"{x[k] / ours:5.2f}" if k in x else f"{'-':>5}"
    print(f"{r['T']:>8} {r['d']:>4} {str(r['muon']):>5} {r.get('math','fp32'):>5} | {fw:9.2f} {g(e,'fwd_ms')} "
          f"{g(c,'fwd_ms')} | {fb:9.2f} {g(e,'fwdbwd_ms')} {g(c,'fwdbwd_ms')} | "
          f"{ratio(e,'fwd_ms',fw)}/{ratio(e,'fwdbwd_ms',fb)} {ratio(c,'fwd_ms',fw)}/{ratio(c,'fwdbwd_ms',fb)} | "
          f"{r['peak_gpu_bytes'] / 1e9:.2f} (finite {r['outputs_finite']})")
for k, t in tor.items():
    for impl, x in t.items():
        print(f"  torch {impl} {k}: fwd {x['fwd_ms']:.2f} ms, fwd+bwd {x['fwdbwd_ms']:.2f} ms, "
              f"peak {x['fwdbwd_peak_bytes'] / 1e9:.2f} GB, warm-up {x['fwdbwd_warmup_s']:.1f} s")
PY
echo "run_gpu_lact.sh: done in $(($(date +%s) - START)) s"
