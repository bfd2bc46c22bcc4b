"""Inference time of the demo CNN against the batch size of ``fedkd.training.predict_logits`` (clients' soft
labels, evaluation), on the demo's test inputs, and whether the logits are the same bits at every batch size.

    python bench/inference_batch.py [--repeats 5] [--threads 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedkd.data import build_benchmark  # noqa: E402
from fedkd.models import build_model  # noqa: E402
from fedkd.training import predict_logits  # noqa: E402
from fedkd.validation import load_run_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_run_config([])
    bench = build_benchmark(cfg.dataset, cfg.seed)
    x = np.concatenate([bench["test"].x, bench["transfer"].x])
    model = build_model(cfg.student.arch, bench.input_shape, bench.num_classes, seed=0)
    reference = predict_logits(model, x, batch_size=len(x))
    print(f"{len(x)} images {bench.input_shape}, model {cfg.student.arch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'batch':>6} {'seconds':>8} {'images/s':>9}  logits vs one batch")
    for batch_size in (2048, 1024, 512, 256, 128, 64):
        predict_logits(model, x, batch_size=batch_size)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            logits = predict_logits(model, x, batch_size=batch_size)
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        same = "same bits" if torch.equal(logits, reference) else f"max diff {(logits - reference).abs().max():.1e}"
        print(f"{batch_size:>6} {seconds:>8.3f} {len(x) / seconds:>9.0f}  {same}")


if __name__ == "__main__":
    main()
