"""Training throughput of the 28x28 teacher architectures, in one run (ratios against ``cnn``, the student):
whether AGRE-KD's MobileNetV2 teachers fit a CPU study of its Table 1.

    python bench/teacher_cost.py [--seconds 5] [--threads 2] [--pool 55000] [--teachers 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedkd.models import build_model  # noqa: E402

ARCHS = ("cnn", "cnn_wide", "mobilenet_v2")


def throughput(arch: str, seconds: float, batch: int = 64) -> float:
    """Training images per second: SGD steps on random 3x28x28 batches for ``seconds`` after two warm-up steps."""
    model = build_model(arch, (3, 28, 28), 10, seed=0).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 28, 28), torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()
    step()
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        images += batch
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pool", type=int, default=55000, help="training images per teacher per epoch")
    parser.add_argument("--teachers", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates = {arch: throughput(arch, args.seconds) for arch in ARCHS}
    print(f"torch threads {args.threads}; one epoch = {args.pool} images per teacher, {args.teachers} teachers")
    print("| arch | parameters | images/s | vs cnn | one epoch, all teachers |")
    print("|---|---|---|---|---|")
    for arch, rate in rates.items():
        params = sum(p.numel() for p in build_model(arch, (3, 28, 28), 10, seed=0).parameters())
        minutes = args.pool * args.teachers / rate / 60
        print(f"| {arch} | {params} | {rate:.0f} | {rate / rates['cnn']:.2f} | {minutes:.1f} min |")


if __name__ == "__main__":
    main()
