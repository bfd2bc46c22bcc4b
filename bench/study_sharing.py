"""What sharing teachers and running jobs in parallel buy a study, measured in one invocation:

    .venv/bin/python bench/study_sharing.py [--study aggregators] [--out runs/bench_study_sharing] [overrides...]

runs the study three times from scratch, each in its own sweep folder: without the teacher store (every job trains
its clients' teachers), with it (each seed's teachers are trained once), and with it on two joblib workers. It
prints each wall time, the two ratios, and whether the three reports hold the same numbers (they must: a job's
results do not depend on where its teachers came from or on how many jobs ran beside it). The study's references
(`study.references`: the server-only and centralized models, once per setting and seed whatever the sharing) are
left out, so that the ratios measure the teachers' sharing alone.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedkd.provenance import cpu_model  # noqa: E402
from fedkd.study_report import build_study_report  # noqa: E402

FEDKD = str(Path(sys.executable).parent / "fedkd")
VARIANTS = {
    "no teacher store, 1 job": ["teacher_store_dir=null"],
    "teacher store, 1 job": ["teacher_store_dir={work}/teachers-serial"],
    "teacher store, 2 joblib jobs": ["teacher_store_dir={work}/teachers-parallel", "hydra/launcher=joblib",
                                     "hydra.launcher.n_jobs=2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="aggregators", help="conf/study/<name>.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_study_sharing")
    parser.add_argument("overrides", nargs="*", help="overrides for every job (e.g. seed=0,1 to shorten it)")
    args = parser.parse_args()
    work = (args.out / datetime.now(UTC).strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    work.mkdir(parents=True)
    print(f"study {args.study} {' '.join(args.overrides)}; folder {work}; CPU {cpu_model()}", flush=True)
    seconds, reports = {}, {}
    for name, extra in VARIANTS.items():
        sweep = work / name.replace(" ", "_").replace(",", "")
        command = [FEDKD, "-m", f"+study={args.study}", "study.references=[]", *args.overrides,
                   *(e.format(work=work) for e in extra),
                   f"hydra.sweep.dir={sweep}"]
        start = time.perf_counter()
        with open(work / f"{sweep.name}.log", "w") as log:
            done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
        seconds[name] = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{name}: fedkd exited {done.returncode}; see {work / f'{sweep.name}.log'}")
        groups, files = build_study_report(sweep, sweep / "report")
        reports[name] = files[1].read_text()
        print(f"{name}: {seconds[name]:.1f} s wall, {sum(len(g.runs) for g in groups)} jobs", flush=True)
    names = list(VARIANTS)
    print(f"sharing teachers: {seconds[names[0]] / seconds[names[1]]:.2f}x faster than training them per job")
    print(f"2 parallel jobs: {seconds[names[1]] / seconds[names[2]]:.2f}x faster than 1")
    same = len(set(reports.values())) == 1
    print(f"the three reports hold the same numbers: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit(1)
    shutil.rmtree(work / "teachers-serial", ignore_errors=True)
    shutil.rmtree(work / "teachers-parallel", ignore_errors=True)


if __name__ == "__main__":
    main()
