"""The default run end to end against the same work as a plain loop, in one invocation: `fedkd` (the demo: Flower's
simulation engine, records on the wire, each client rebuilding its state per message) and this script's loop, which
calls the same fedkd functions for the science (each client's teacher training and evaluation, its answers on the
transfer pool and its ERM base's, the aggregator, the student's distillation and evaluation, the ensemble on test,
the server-only references) in one process, every step on 2 torch threads (the demo's clients run on
``federation.client_cpus`` threads each, two at a time): no Flower, no Ray, no records, the data built once. Both
are timed as fresh processes, imports included. The students agree to float order (the thread counts differ) and to
the demo's choice of the best round on the labeled split (the loop keeps the last).

    python bench/demo_speed.py [hydra overrides ...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PLAIN = """
import sys, time, json
import numpy as np, torch
sys.path.insert(0, {root!r})
from fedkd.aggregators import AGGREGATORS
from fedkd.baselines import ensemble_report
from fedkd.data import federated_data
from fedkd.local import query_local_teacher, train_local_teacher
from fedkd.server_only import server_only_reports
from fedkd.soft_labels import AggregationInputs
from fedkd.training import predict_logits
from fedkd.validation import client_job, load_run_config
from server.student import StudentTraining

torch.set_num_threads(2)
cfg = load_run_config(sys.argv[1:])
m, seed = cfg.federation.num_clients, cfg.seed
data = federated_data(cfg.dataset, cfg.partition, m, seed)
bench = data.benchmark
aggregator = AGGREGATORS[cfg.aggregator.name](cfg.aggregator)
job = client_job(cfg)
student = StudentTraining(cfg, bench, torch.device("cpu"))
transfer = np.arange(len(bench["transfer"]))
states = [None] * m
for server_round in range(1, cfg.federation.num_rounds + 1):
    reports = []
    for pid in range(m):
        states[pid], report = train_local_teacher(job, pid, server_round, states[pid])
        reports.append(report)
    answers = [query_local_teacher(job, pid, states[pid], transfer, aggregator.needs_base, "transfer",
                                   server_round) for pid in range(m)]
    teacher_logits = torch.from_numpy(np.stack([a[0] for a in answers]))
    base_logits = torch.from_numpy(np.stack([a[1] for a in answers])) if aggregator.needs_base else None
    aggregator.prepare(AggregationInputs(
        teacher_logits=teacher_logits, temperature=cfg.student.temperature,
        class_counts=torch.tensor([r.class_counts for r in reports]), base_logits=base_logits,
        groups=bench["transfer"].g, labels=bench["transfer"].y, group_names=bench.group_names, seed=seed,
        clients=tuple(range(m)), round=server_round))
    student.distill(server_round, bench["transfer"].x, transfer, aggregator)
    for split in ("val", "test"):
        bench.report(predict_logits(student.model, bench[split].x).argmax(1).numpy(), split)
test = np.arange(len(bench["test"]))
ensemble = ensemble_report(torch.from_numpy(np.stack(
    [query_local_teacher(job, pid, states[pid], test, False, "test", server_round)[0] for pid in range(m)])), bench)
references = server_only_reports(cfg, bench) if cfg.baselines.server_only else {{}}
final = bench.report(predict_logits(student.model, bench["test"].x).argmax(1).numpy())
print(json.dumps({{"accuracy": final["accuracy"], "worst_group_accuracy": final["worst_group_accuracy"],
                  "ensemble_accuracy": ensemble["accuracy"],
                  "server_only_accuracy": references.get("server_only", {{}}).get("accuracy")}}))
"""


def timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, done.stdout


def main(overrides: list[str]) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    with tempfile.TemporaryDirectory(prefix="fedkd-demo-speed-") as work:
        demo_s, _ = timed([sys.executable, "-m", "fedkd", *overrides, f"runs_dir={work}"], env)
        (summary_path,) = Path(work).glob("*/*/summary.json")
        summary = json.loads(summary_path.read_text())
        plain_s, out = timed([sys.executable, "-c", PLAIN.format(root=str(ROOT)), *overrides,
                              f"runs_dir={work}/plain"], env)
    plain = json.loads(out.strip().splitlines()[-1])
    demo = {"accuracy": summary["test"]["accuracy"], "worst_group_accuracy": summary["test"]["worst_group_accuracy"],
            "ensemble_accuracy": summary["baselines"]["ensemble"]["accuracy"]}
    figures = {"overrides": overrides, "demo_s": demo_s, "plain_loop_s": plain_s, "ratio": demo_s / plain_s,
               "demo": demo, "plain_loop": plain}
    print(f"demo end to end {demo_s:.1f} s, the same work as a plain loop {plain_s:.1f} s: "
          f"ratio {demo_s / plain_s:.2f}")
    print(f"final student, demo {demo} / plain loop {plain}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
