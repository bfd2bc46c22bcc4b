"""Cost of AGRE-KD's teacher weighting relative to a plain distillation step: one epoch of the student on the
demo's transfer pool with aggregator=mean, and with AGRE-KD's weights from the closed form on the last layer
(the default) and from per-sample gradients with torch.func (on the head, and on all parameters).

    python bench/agre_cost.py [--teachers 10] [--repeats 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedkd.aggregators import AGGREGATORS  # noqa: E402
from fedkd.data import build_benchmark  # noqa: E402
from fedkd.distill import STUDENT_OBJECTIVES, distill_student  # noqa: E402
from fedkd.models import build_model  # noqa: E402
from fedkd.soft_labels import AggregationInputs  # noqa: E402
from fedkd.training import sgd  # noqa: E402
from fedkd.validation import load_run_config  # noqa: E402

VARIANTS = {
    "mean (plain KD)": ("mean", {}),
    "agre, closed form on the last layer": ("agre", {"gradient": "last_layer"}),
    "agre, per-sample gradients (torch.func), head": ("agre", {"gradient": "per_sample", "param_set": "head"}),
    "agre, per-sample gradients (torch.func), all parameters": ("agre", {"gradient": "per_sample",
                                                                         "param_set": "all"}),
}


def epoch_seconds(cfg, data, teacher_logits: torch.Tensor, base_logits: torch.Tensor, name: str,
                  options: dict) -> tuple[float, int]:
    """Seconds of one student epoch over the transfer pool, and its number of minibatch steps."""
    agg_cfg = dataclasses.replace(cfg.aggregator, name=name, **options)
    aggregator = AGGREGATORS[name](agg_cfg)
    transfer = data["transfer"]
    aggregator.prepare(AggregationInputs(
        teacher_logits=teacher_logits, temperature=cfg.student.temperature,
        class_counts=torch.ones(len(teacher_logits), data.num_classes), base_logits=base_logits,
        groups=transfer.g, group_names=data.group_names, seed=cfg.seed))
    student = build_model(cfg.student.arch, data.input_shape, data.num_classes, seed=0)
    student_cfg = dataclasses.replace(cfg.student, epochs=1, min_steps=0)
    objective = STUDENT_OBJECTIVES["kd"](student_cfg, student, data["val"], data.num_classes)
    optimizer = sgd(student, student_cfg.lr, student_cfg.momentum, student_cfg.weight_decay)
    start = time.perf_counter()
    distill_student(student, optimizer, objective, transfer.x, aggregator, np.random.default_rng(0))
    return time.perf_counter() - start, -(-len(transfer) // student_cfg.batch_size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_run_config([])
    data = build_benchmark(cfg.dataset, cfg.seed)
    gen = torch.Generator().manual_seed(0)
    shape = (args.teachers, len(data["transfer"]), data.num_classes)
    teacher_logits, base_logits = torch.randn(shape, generator=gen) * 3, torch.randn(shape, generator=gen) * 3
    rows = []
    for label, (name, options) in VARIANTS.items():
        times = []
        for _ in range(args.repeats):
            seconds, steps = epoch_seconds(cfg, data, teacher_logits, base_logits, name, options)
            times.append(seconds)
        rows.append({"variant": label, "epoch_s": min(times), "steps": steps,
                     "ms_per_step": 1000 * min(times) / steps})
    base = rows[0]["epoch_s"]
    print(f"{len(data['transfer'])} transfer points, {args.teachers} teachers, batch {cfg.student.batch_size}, "
          f"{torch.get_num_threads()} torch threads; best of {args.repeats}")
    for row in rows:
        row["ratio_to_plain_kd"] = row["epoch_s"] / base
        print(f"{row['variant']:58s} {row['ms_per_step']:8.1f} ms/step  x{row['ratio_to_plain_kd']:.2f}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
