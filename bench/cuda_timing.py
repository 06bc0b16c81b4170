"""One timing loop for the PyTorch benchmarks of bench/: `warmup` untimed calls, then `repeats` calls each timed
by CUDA events around it; returns (median ms, every call's ms)."""
import statistics


def cuda_timed(fn, warmup, repeats):
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        ms.append(start.elapsed_time(end))
    return statistics.median(ms), ms
