#!/usr/bin/env python3
"""What a run costs, counted (not timed): history events, state transitions, Lambda calls and
SSH connections per execution, for the example workflow and for wide parallel runs.

Usage: .venv/bin/python scripts/benchmark.py [--scheduler slurm|sge] [--backend existing|cfncluster] [--json]
Needs the local cluster (make cluster-up). Wall-clock seconds are printed for information only.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "functions"))

from stepcluster.local.runner import run_local  # noqa: E402

#: Step Functions Standard: 25,000 history events per execution.
HISTORY_LIMIT = 25_000


def parallel_config(folder: Path, count: int, command: str, wait_time: int) -> Path:
    job = folder / f"job-{count}"          # one folder per case: the cases are built up front
    job.mkdir(parents=True, exist_ok=True)
    (job / "run.sh").write_text(f"#!/bin/bash\n{command}\n")  # shared by all jobs of the case
    names = [f"job{i:04d}" for i in range(count)]
    text = "[order]\nparallel = " + ", ".join(names) + "\n" + "".join(
        f"\n[job {n}]\nhandler = run.sh\nlocal_path = {job.name}\nwait_time = {wait_time}\n" for n in names)
    path = folder / f"parallel-{count}.ini"
    path.write_text(text)
    return path


def example_as_parallel(folder: Path) -> Path:
    text = (ROOT / "examples" / "jobs.ini").read_text().replace("sequential =", "parallel =")
    text = text.replace("local_path = jobs/", f"local_path = {ROOT}/examples/jobs/")
    path = folder / "example-parallel.ini"
    path.write_text(text)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", default="slurm", choices=["slurm", "sge"])
    parser.add_argument("--backend", default="existing", choices=["existing", "cfncluster"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = [
            ("example, sequential (3 jobs)", ROOT / "examples" / "jobs.ini"),
            ("example, parallel (3 jobs)", example_as_parallel(folder)),
            ("20 x sleep 5, parallel, wait_time 1", parallel_config(folder, 20, "sleep 5", 1)),
            ("100 x sleep 5, parallel, wait_time 1", parallel_config(folder, 100, "sleep 5", 1)),
            ("1000 x true, parallel, wait_time 2", parallel_config(folder, 1000, "true", 2)),
        ]
        for label, config in cases:
            start = time.monotonic()
            report = run_local(str(config), "bench", scheduler=args.scheduler, backend=args.backend)
            counts = report.counts
            polls = report.invocations.get("PollJobsFunction", 0)
            rows.append({"case": label, "status": report.status, **counts, "poll_rounds": polls,
                         "events_per_poll_round": round(counts["history_events"] / max(polls, 1), 1),
                         "seconds": round(time.monotonic() - start, 1)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        keys = ["status", "history_events", "state_transitions", "lambda_invocations",
                "ssh_connections", "poll_rounds", "seconds"]
        print(f"{'case':<40} " + " ".join(f"{k:>18}" for k in keys))
        for row in rows:
            print(f"{row['case']:<40} " + " ".join(f"{row[k]!s:>18}" for k in keys))
        print(f"\n(history limit per execution: {HISTORY_LIMIT:,} events; one polling round = "
              "Wait + Task + Choice = 3 transitions)")
    return 0 if all(r["status"] == "SUCCEEDED" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
