"""Benchmarks (speed, not correctness): `python -m splitlib.bench sweep`.

Prints one JSON line. Never asserted in tests: wall times depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np


def bench_sweep(n_pairs: int = 16, n_multipliers: int = 9) -> dict[str, object]:
    """The engine against the naive loop (one hooked forward per pair per m) on the embedded model."""
    import torch

    from .data import load_task
    from .profiles import get_profile
    from .models import load_model
    from .sweep import diffmean, naive_sweep, residual_norm, run_sweep

    profile = get_profile("cpu")
    model, tokenizer = load_model(profile)
    task = load_task("psychopathy", profile)
    pairs = task.test[:n_pairs]
    vector = diffmean(model, tokenizer, task.train, profile.layer)
    # Multipliers that move the residual stream by up to one typical norm: all three regions.
    unit = residual_norm(model, tokenizer, task.train, profile.layer) / float(vector.delta_b.detach().norm())
    grid = [float(x) for x in np.linspace(-1, 1, n_multipliers) * unit]
    start = time.perf_counter()
    fast = run_sweep(model, tokenizer, pairs, vector, grid, cache=False, progress=False, batch_size=profile.batch_size)
    engine_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = naive_sweep(model, tokenizer, pairs, vector, grid)
    naive_s = time.perf_counter() - start
    diff = max(float((fast[c] - slow[c]).abs().max()) for c in ("loss_pos", "loss_neg"))
    return {
        "benchmark": "sweep",
        "data": task.origin,
        "pairs": len(pairs),
        "multipliers": len(grid),
        "threads": torch.get_num_threads(),
        "naive_s": round(naive_s, 3),
        "engine_s": round(engine_s, 3),
        "speedup": round(naive_s / engine_s, 2),
        "max_abs_diff": diff,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitlib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=("sweep",))
    args = parser.parse_args(argv)
    result = {"sweep": bench_sweep}[args.which]()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
