"""Measures the GPU-to-GPU all-reduce bandwidth NCCL reaches on this node (the link the data-parallel gradient sum
and the sharded optimizer use), for the communication floors in docs/PERF.md.

Launch one process per GPU, e.g. on two GPUs:
    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node 2 bench/allreduce_bandwidth.py
or without torchrun (what bench scripts on the device do):
    for r in 0 1; do RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 \
        python3 bench/allreduce_bandwidth.py & done; wait

Prints, on rank 0, one JSON line per message size: the median time of `--repeats` fp32 all-reduces (sum) after a
warm-up, the algorithm bandwidth (bytes / time) and the bus bandwidth (algorithm bandwidth x 2 (n - 1) / n, the
per-link rate of a ring; nccl-tests' convention).
"""
import argparse
import json
import os
import statistics

import torch
import torch.distributed as dist


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-mb", default="4,25,100,400,1600", help="comma-separated message sizes in MB (fp32)")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise SystemExit(f"allreduce_bandwidth.py: {var} is not set (launch with torchrun, or set the five "
                             "variables RANK WORLD_SIZE LOCAL_RANK MASTER_ADDR MASTER_PORT)")
    local = int(os.environ["LOCAL_RANK"])
    if not torch.cuda.is_available() or torch.cuda.device_count() <= local:
        raise SystemExit(f"allreduce_bandwidth.py: rank needs GPU {local}, {torch.cuda.device_count()} visible")
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    n = dist.get_world_size()
    for mb in [float(s) for s in args.sizes_mb.split(",")]:
        x = torch.ones(int(mb * 1e6 / 4), dtype=torch.float32, device="cuda")
        for _ in range(2):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        times = []
        for _ in range(args.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dist.all_reduce(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        t = statistics.median(times)
        nbytes = x.numel() * 4
        if dist.get_rank() == 0:
            print(json.dumps({"bench": "allreduce", "ranks": n, "bytes": nbytes, "seconds": t,
                              "algbw_GBps": nbytes / t / 1e9, "busbw_GBps": nbytes / t / 1e9 * 2 * (n - 1) / n,
                              "gpu": torch.cuda.get_device_name(local), "nccl": ".".join(map(str, torch.cuda.nccl.version()))}),
                  flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
