"""Benchmarks (speed, not correctness): `python -m splitlib.bench {sweep,train}`.

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


def bench_train(steps: int = 12, form: str = "lora", method: str = "split") -> dict[str, object]:
    """Training steps with layers 0..L computed once against steps through the whole model."""
    import torch

    from .data import load_task
    from .models import load_model
    from .profiles import get_profile
    from .train import Trainer, config_for

    profile = get_profile("cpu")
    model, tokenizer = load_model(profile)
    task = load_task("psychopathy", profile)
    config = config_for(profile, "psychopathy", method, form)
    result: dict[str, object] = {"benchmark": "train", "data": task.origin, "method": method, "form": form,
                                 "layer": profile.layer, "n_layers": model.config.num_hidden_layers,
                                 "batch_size": config.batch_size, "steps": steps, "threads": torch.get_num_threads()}
    for reuse in (False, True):
        trainer = Trainer(model, tokenizer, task.train, method, form, profile.layer, config,
                          rank=profile.lora_rank, reuse_lower_layers=reuse)
        trainer.train(progress=False, max_steps=1)  # warm-up
        start = time.perf_counter()
        trainer.train(progress=False, max_steps=steps)
        elapsed = time.perf_counter() - start
        result["reused_s" if reuse else "whole_model_s"] = round(elapsed, 3)
        result["final_loss_reused" if reuse else "final_loss_whole_model"] = round(trainer.history[-1], 5)
    result["speedup"] = round(result["whole_model_s"] / result["reused_s"], 2)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitlib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=("sweep", "train"))
    args = parser.parse_args(argv)
    result = {"sweep": bench_sweep, "train": bench_train}[args.which]()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
