#!/usr/bin/env python3
"""What a run costs, counted, and how far it is from the floor, measured in the same run.

Usage: .venv/bin/python scripts/benchmark.py [--scheduler slurm|sge] [--quick] [--long] [--json]

Needs the local cluster (make cluster-up). Each case runs the real definition in moto's
interpreter with the project's handlers, on the local Slurm (or Grid Engine) over SSH, and
prints what Step Functions bills and limits (history events, state transitions), Lambda calls,
SSH connections, wall time, and, where there is one, the floor: the same jobs run by a script
on one SSH connection that submits with sbatch (qsub) and asks squeue (qstat) every 0.1 s.

Cases:
  history   one `sleep 60` job at wait_time 10: events per hour of run, with no poll window
            (each round looks once, the Wait state waits wait_time) and with one; the projection
            to the deployed 720 s window is events per round x 3600 / 720. --long also runs a
            `sleep 900` job under the 720 s window itself (15 minutes).
  lag       20 x `sleep 1`, sequential and parallel: the jobs' part of the run (first Submit
            Jobs to the last Poll Jobs round; the whole run's seconds are printed too) against
            the floor, and how long after each handler ended the round that reported it returned.
  wide      1,000 x `true`, parallel: Submit Jobs, a round's look at every job (without its
            waiting and keeping), the results kept in all, Release Head Node, and the largest
            state payload (the limit is 256 KiB: a run of more than 200 jobs keeps their
            records in the artifacts bucket, so it does not grow with the jobs).
  wider     the same with 10,000 jobs (several minutes).
  graph     1,000 `true` jobs in a 10-level layered graph: validate's CPU time, and the run.
  watch     the head node's CPU while a round waits with 1,000 and with 10,000 jobs in flight
            and none of them changing (jobscripts.watch_script, 20 s), beside the floor's
            watching: squeue (qstat) every 0.1 s over as many held jobs, for as long (the
            commands' own CPU; the scheduler daemon's is not counted on either side).
  follow    200 x `true`, sequential: CPU seconds of this whole process (run-local and the
            handlers it hosts), whose history reading must stay O(new events).
  packages  what `sam build` ships each python3.11 function (its package and layers, bytes) and
            its cold start's imports from those files alone, with and without the build's
            bytecode, beside the floor (the interpreter importing boto3 alone):
            scripts/measure_packages.py on .aws-sam/build (`make benchmark` builds first).
--quick runs history and lag only.

Wall-clock figures are measurements on this machine, printed; no test depends on them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "functions"))

from stepcluster.local.runner import LocalCluster, run_local  # noqa: E402

#: Step Functions Standard: 25,000 history events per execution; 256 KiB per state's payload.
HISTORY_LIMIT = 25_000
PAYLOAD_LIMIT = 256 * 1024
DEPLOYED_WINDOW = 720   # template.yaml: PollWindowSeconds' default
FLOOR_POLL_SECONDS = 0.1


# -- configs -----------------------------------------------------------------------------------
def config(folder: Path, label: str, count: int, command: str, wait_time: int, order: str,
           stamps: Path | None = None) -> Path:
    """COUNT jobs running COMMAND; with `stamps`, each handler writes the epoch it ended
    (to the nanosecond) to STAMPS/NAME, for the lag figures."""
    job = folder / label
    job.mkdir(parents=True, exist_ok=True)
    stamp = (f'\ndate +%s.%N > {shlex.quote(str(stamps))}/"$(basename "$STEPCLUSTER_JOB_DIR")"'
             if stamps else "")
    (job / "run.sh").write_text(f"#!/bin/bash\n{command}{stamp}\n")
    names = [f"job{i:05d}" for i in range(count)]
    text = f"[order]\n{order} = " + ", ".join(names) + "\n" + "".join(
        f"\n[job {n}]\nhandler = run.sh\nlocal_path = {job.name}\nwait_time = {wait_time}\n" for n in names)
    path = folder / f"{label}.ini"
    path.write_text(text)
    return path


def stamp_folder(folder: Path, label: str) -> Path:
    stamps = folder / f"{label}-ends"
    stamps.mkdir()
    stamps.chmod(0o777)          # the rig's jobs run as its own user
    return stamps


# -- the floor ---------------------------------------------------------------------------------
class Floor:
    """The same jobs with nothing around them: one SSH connection, submit, ask every 0.1 s."""

    def __init__(self, scheduler: str, cluster: LocalCluster):
        import io

        import paramiko

        self.scheduler = scheduler
        self.client = paramiko.SSHClient()
        self.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # the local rig only
        key = paramiko.Ed25519Key.from_private_key(io.StringIO(cluster.private_key))
        self.client.connect(cluster.host, port=cluster.port, username=cluster.user, pkey=key,
                            look_for_keys=False, allow_agent=False)
        self.home = self.run("echo $HOME").strip()
        self.looks: list[float] = []      # seconds of each squeue/qstat over the jobs in flight

    def run(self, command: str) -> str:
        _, out, err = self.client.exec_command(command)
        text = out.read().decode()
        out.channel.recv_exit_status()
        return text

    def put(self, path: str, text: str) -> None:
        self.run(f"mkdir -p {shlex.quote(os.path.dirname(path))} && cat > {shlex.quote(path)} <<'EOF'\n{text}EOF")

    def submit(self, script: str, count: int, held: bool = False) -> list[str]:
        hold = ("--hold " if self.scheduler == "slurm" else "-h ") if held else ""
        if self.scheduler == "slurm":
            one = f"sbatch --parsable {hold}-o /dev/null -e /dev/null {shlex.quote(script)}"
        else:
            one = f"qsub -terse {hold}-o /dev/null -e /dev/null -S /bin/bash {shlex.quote(script)}"
        out = self.run(f"for i in $(seq {count}); do {one}; done")
        return [line.split(";")[0] for line in out.split()]

    def cancel(self, ids: list[str]) -> None:
        tool = "scancel" if self.scheduler == "slurm" else "qdel"
        self.run(f"printf '%s\\n' {' '.join(ids)} | xargs -n 1000 {tool} >/dev/null 2>&1")

    def cpu_seconds(self, path: str) -> float:
        """User + system CPU of `bash PATH` and what it starts (bash's `time`)."""
        out = self.run(f"TIMEFORMAT='%U %S'; {{ time bash {shlex.quote(path)} >/dev/null 2>&1; }} 2>&1")
        user, system = out.split()[-2:]
        return float(user) + float(system)

    def watching_cpu(self, ids: list[str], seconds: int) -> float:
        """The floor's way to learn of an end: ask about every job every 0.1 s, `seconds` long."""
        if self.scheduler == "slurm":
            ask = f"squeue -h -o %i -j {','.join(ids)} >/dev/null 2>&1"
        else:
            ask = "qstat >/dev/null 2>&1"
        path = f"{self.home}/stepcluster-floor/watch-floor.sh"
        self.put(path, f"end=$((SECONDS + {seconds}))\nwhile [ $SECONDS -lt $end ]; do {ask}; "
                       f"sleep {FLOOR_POLL_SECONDS}; done\n")
        return self.cpu_seconds(path)

    def live(self, ids: list[str]) -> set[str]:
        began = time.monotonic()
        try:
            return self._live(ids)
        finally:
            self.looks.append(time.monotonic() - began)

    def _live(self, ids: list[str]) -> set[str]:
        if self.scheduler == "slurm":
            out = self.run(f"squeue -h -o %i -j {','.join(ids)} 2>/dev/null")
        else:
            out = self.run("qstat 2>/dev/null | awk 'NR > 2 {print $1}'")
        return set(out.split()) & set(ids)

    def wait(self, ids: list[str]) -> None:
        while self.live(ids):
            time.sleep(FLOOR_POLL_SECONDS)

    def jobs(self, command: str, count: int, parallel: bool) -> float:
        script = f"{self.home}/stepcluster-floor/run.sh"
        self.put(script, f"#!/bin/bash\n{command}\n")
        began = time.monotonic()
        if parallel:
            self.wait(self.submit(script, count))
        else:
            for _ in range(count):
                self.wait(self.submit(script, 1))
        return time.monotonic() - began

    def close(self) -> None:
        self.run("rm -rf ~/stepcluster-floor")
        self.client.close()


# -- reading a run -----------------------------------------------------------------------------
def reported_lags(report, stamps: Path) -> list[float]:
    """Per job: seconds from its handler's end to the end of the Poll Jobs round that
    reported it ended (the round's record lists the jobs it changed)."""
    ends = {p.name: float(p.read_text()) for p in stamps.iterdir() if p.read_text().strip()}
    seen = {}
    for event in report.events:
        if event["type"] == "TaskStateExited" and event["stateExitedEventDetails"]["name"] == "Poll Jobs":
            run = json.loads(event["stateExitedEventDetails"]["output"]).get("run", {})
            for change in run.get("changes") or []:
                if change["state"] == "SUCCEEDED" and change["job"] not in seen:
                    seen[change["job"]] = event["timestamp"].timestamp()
    return [seen[n] - ends[n] for n in ends if n in seen]


def jobs_seconds(report) -> float:
    """From the first Submit Jobs to the end of the last Poll Jobs round: the run's part that
    the floor does (the cluster's making and teardown around it are not in the floor)."""
    def when(kind, state):
        return [e["timestamp"].timestamp() for e in report.events if e["type"] == kind
                and (e.get("stateEnteredEventDetails") or e.get("stateExitedEventDetails") or {}).get("name") == state]
    return max(when("TaskStateExited", "Poll Jobs")) - min(when("TaskStateEntered", "Submit Jobs"))


def largest_payload(report) -> int:
    return max((len(e["stateExitedEventDetails"].get("output") or "")
                for e in report.events if e["type"].endswith("StateExited")), default=0)


def poll_events(report) -> int:
    """History events of the polling rounds: from the first Poll Jobs to the last round's Choice."""
    kinds = {"Poll Jobs", "Wait For Jobs", "Are Jobs Done?"}
    count, inside = 0, None
    for event in report.events:
        details = event.get("stateEnteredEventDetails") or event.get("stateExitedEventDetails")
        if details:
            inside = details["name"] in kinds
        if inside:
            count += 1
    return count


def execute(config_path: Path, scheduler: str, **overrides):
    began_wall, began_cpu = time.monotonic(), time.process_time()
    report = run_local(str(config_path), "bench", scheduler=scheduler,
                       settings_overrides={k: str(v) for k, v in overrides.items()})
    report.seconds = time.monotonic() - began_wall
    report.cpu_seconds = time.process_time() - began_cpu
    return report


def row(case: str, report=None, **figures) -> dict:
    out = {"case": case}
    if report is not None:
        out.update(status=report.status, **report.counts,
                   poll_rounds=report.invocations.get("PollJobsFunction", 0),
                   seconds=round(report.seconds, 2))
    out.update(figures)
    return out


# -- the cases ---------------------------------------------------------------------------------
def history_case(folder: Path, scheduler: str, long: bool) -> list[dict]:
    rows = []
    cfg = config(folder, "history", 1, "sleep 60", 10, "sequential")
    for window in (0, 20):
        report = execute(cfg, scheduler, poll_window_seconds=window)
        events, rounds = poll_events(report), report.invocations.get("PollJobsFunction", 0)
        per_round = events / max(rounds, 1)
        rows.append(row(f"1 x sleep 60, wait_time 10, PollWindowSeconds {window}", report,
                        poll_events=events, events_per_round=round(per_round, 1),
                        events_per_hour=round(events / 60 * 3600),
                        events_per_hour_at_720=round(per_round * 3600 / DEPLOYED_WINDOW) if window else None))
    if long:
        cfg = config(folder, "history-long", 1, "sleep 900", 10, "sequential")
        report = execute(cfg, scheduler)
        events = poll_events(report)
        rows.append(row("1 x sleep 900, wait_time 10, PollWindowSeconds 720", report,
                        poll_events=events, events_per_hour=round(events / 900 * 3600)))
    return rows


def lag_case(folder: Path, scheduler: str, floor: Floor) -> list[dict]:
    rows = []
    for order in ("sequential", "parallel"):
        for window in (0, DEPLOYED_WINDOW):
            label = f"lag-{order}-{window}"
            stamps = stamp_folder(folder, label)
            cfg = config(folder, label, 20, "sleep 1", 10, order, stamps)
            report = execute(cfg, scheduler, poll_window_seconds=window)
            lags = reported_lags(report, stamps)
            floor_seconds = floor.jobs("sleep 1", 20, order == "parallel")
            jobs = jobs_seconds(report)
            rows.append(row(f"20 x sleep 1, {order}, wait_time 10, PollWindowSeconds {window}", report,
                            jobs_seconds=round(jobs, 2), floor_seconds=round(floor_seconds, 2),
                            ratio=round(jobs / floor_seconds, 2),
                            reported_after_median=round(statistics.median(lags), 2) if lags else None,
                            reported_after_max=round(max(lags), 2) if lags else None))
    return rows


class Timed:
    """Wall time of every call of module.NAME in this process (run-local hosts the handlers)."""

    def __init__(self, module, name: str):
        self.module, self.name, self.seconds = module, name, []

    def __enter__(self):
        original = self.original = getattr(self.module, self.name)

        def timed(*args, **kwargs):
            began = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds.append(time.monotonic() - began)
        setattr(self.module, self.name, timed)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.original)


def wide_case(folder: Path, scheduler: str, floor: Floor, count: int = 1000) -> list[dict]:
    """COUNT x `true` in parallel: Submit Jobs, a round's look at every job (its files and one
    scheduler query, without the waiting and the keeping), the results kept (every call, in the
    rounds and at the release), Release Head Node, and the largest state payload."""
    from stepcluster import headnode, results

    cfg = config(folder, f"wide-{count}", count, "true", 2, "parallel")
    with Timed(headnode.HeadNodeWork, "_observe") as looks, Timed(results, "collect") as keeps:
        report = execute(cfg, scheduler)
    d = report.durations
    polls = d.get("PollJobsFunction", [])
    floor.looks.clear()
    floor_seconds = floor.jobs("true", count, parallel=True)
    floor_looks = list(floor.looks)
    jobs = jobs_seconds(report)
    return [row(f"{count} x true, parallel, wait_time 2", report, jobs_seconds=round(jobs, 2),
                submit_s=round(sum(d.get("SubmitJobsFunction", [])), 2),
                look_s_median=round(statistics.median(looks.seconds), 2) if looks.seconds else None,
                look_s_max=round(max(looks.seconds), 2) if looks.seconds else None,
                floor_look_s_median=round(statistics.median(floor_looks), 2) if floor_looks else None,
                poll_round_median_s=round(statistics.median(polls), 2) if polls else None,
                keep_s_total=round(sum(keeps.seconds), 2),
                release_s=round(sum(d.get("ReleaseHeadNodeFunction", [])), 2),
                largest_payload_bytes=largest_payload(report),
                floor_seconds=round(floor_seconds, 2), ratio=round(jobs / floor_seconds, 2))]


def watch_case(floor: Floor, counts=(1000, 10_000), seconds: int = 20) -> list[dict]:
    """A quiet watching round's CPU on the head node, with COUNT jobs in flight, beside the
    floor's squeue every 0.1 s over COUNT held jobs, for as long."""
    from stepcluster import jobscripts
    from stepcluster.headnode import WATCH_TICK_SECONDS

    rows = []
    for count in counts:
        run_dir = f"{floor.home}/stepcluster-floor/watch-{count}"
        names = [f"j{i}" for i in range(count)]
        floor.run(f"mkdir -p {run_dir}/events && cd {run_dir} && mkdir -p jobs && cd jobs && "
                  f"printf '%s\\n' {' '.join(names)} | xargs mkdir -p")
        script = jobscripts.watch_script(run_dir, names, {}, seconds, WATCH_TICK_SECONDS)
        floor.put(f"{run_dir}/watch.sh", script)
        ours = floor.cpu_seconds(f"{run_dir}/watch.sh")
        ids = floor.submit(f"{floor.home}/stepcluster-floor/run.sh", count, held=True)
        try:
            theirs = floor.watching_cpu(ids, seconds)
        finally:
            floor.cancel(ids)
        rows.append(row(f"a quiet watching round, {count} jobs in flight, {seconds} s",
                        cpu_s_per_minute=round(ours * 60 / seconds, 2),
                        floor_cpu_s_per_minute=round(theirs * 60 / seconds, 2),
                        ratio=round(ours / theirs, 3) if theirs else None))
    return rows


def graph_case(folder: Path, scheduler: str, levels: int = 10, width: int = 100) -> list[dict]:
    """A layered graph of LEVELS x WIDTH `true` jobs, each waiting for ten jobs of the level
    before it: validate's time, then the run (each level goes out from the round that saw the
    last job it waits for end)."""
    job = folder / "graph"
    job.mkdir(exist_ok=True)
    (job / "run.sh").write_text("#!/bin/bash\ntrue\n")
    names = [[f"l{level}j{i:03d}" for i in range(width)] for level in range(levels)]
    lines = ["[order]", "parallel = " + ", ".join(n for row in names for n in row), ""]
    for level, layer in enumerate(names):
        for i, name in enumerate(layer):
            lines += [f"[job {name}]", "handler = run.sh", "local_path = graph", "wait_time = 2"]
            if level:
                lines.append("depends_on = " + ", ".join(names[level - 1][k] for k in range(i % 10, width, 10)))
            lines.append("")
    cfg = folder / "graph.ini"
    cfg.write_text("\n".join(lines))
    from stepcluster.config import load_jobs_config

    began = time.process_time()
    load_jobs_config(str(cfg))
    validate_s = time.process_time() - began
    report = execute(cfg, scheduler)
    jobs = jobs_seconds(report)
    return [row(f"{levels * width} jobs in a {levels}-level graph (10 edges a job), wait_time 2", report,
                validate_cpu_s=round(validate_s, 3), jobs_seconds=round(jobs, 2),
                submit_jobs_calls=report.invocations.get("SubmitJobsFunction", 0),
                largest_payload_bytes=largest_payload(report))]


def follow_case(folder: Path, scheduler: str, count: int = 200) -> list[dict]:
    cfg = config(folder, f"follow-{count}", count, "true", 1, "sequential")
    report = execute(cfg, scheduler)
    return [row(f"{count} x true, sequential: run-local's CPU", report,
                cpu_seconds=round(report.cpu_seconds, 1))]


def packages_case() -> list[dict]:
    import measure_packages

    build = ROOT / ".aws-sam" / "build"
    if not (build / "template.yaml").is_file():
        raise SystemExit(f"no `sam build` output in {build}: run `make build` (make benchmark does)")
    report = measure_packages.measure(build)
    floor = report["floor_import_boto3_ms"]["median"]
    rows = []
    for name, r in report["functions"].items():
        rows.append({"case": f"{name}: package and cold-start imports",
                     "package_mb": round(r["package_bytes"] / 1e6, 2),
                     "with_layers_mb": round(r["total_bytes"] / 1e6, 2), "layers": ",".join(r["layers"]),
                     "imports_ms_median": r["import_ms"]["median"], "imports_ms_worst": r["import_ms"]["worst"],
                     "without_bytecode_ms": r["import_ms_without_bytecode"]["median"],
                     "floor_ms": floor, "ratio": round(r["import_ms"]["median"] / floor, 2),
                     "clients_ms": r["clients_ms"]["median"]})
    return rows


COLUMNS = ["status", "history_events", "state_transitions", "lambda_invocations", "ssh_connections",
           "poll_rounds", "seconds"]


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        print(f"\n{r['case']}")
        if any(k in r for k in COLUMNS):
            print("  " + "  ".join(f"{k}={r[k]}" for k in COLUMNS if k in r))
        extra = {k: v for k, v in r.items() if k not in COLUMNS and k != "case" and v is not None}
        if extra:
            print("  " + "  ".join(f"{k}={v}" for k, v in extra.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", default="slurm", choices=["slurm", "sge"])
    parser.add_argument("--quick", action="store_true", help="the history and lag cases only")
    parser.add_argument("--long", action="store_true", help="also a 15-minute job under the 720 s window")
    parser.add_argument("--only", choices=["history", "lag", "wide", "wider", "graph", "watch", "follow",
                                           "packages"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    floor = Floor(args.scheduler, LocalCluster())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            folder.chmod(0o755)
            wanted = [args.only] if args.only else (["history", "lag"] if args.quick else
                                                    ["history", "lag", "wide", "wider", "graph", "watch",
                                                     "follow", "packages"])
            for case in wanted:
                if case == "history":
                    rows += history_case(folder, args.scheduler, args.long)
                elif case == "lag":
                    rows += lag_case(folder, args.scheduler, floor)
                elif case == "wide":
                    rows += wide_case(folder, args.scheduler, floor)
                elif case == "wider":
                    rows += wide_case(folder, args.scheduler, floor, count=10_000)
                elif case == "graph":
                    rows += graph_case(folder, args.scheduler)
                elif case == "watch":
                    floor.put(f"{floor.home}/stepcluster-floor/run.sh", "#!/bin/bash\ntrue\n")
                    rows += watch_case(floor)
                elif case == "packages":
                    rows += packages_case()
                else:
                    rows += follow_case(folder, args.scheduler)
    finally:
        floor.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_rows(rows)
        print(f"\n(limits: {HISTORY_LIMIT:,} history events per execution, {PAYLOAD_LIMIT:,} bytes per "
              f"state payload; floor: one SSH connection, {'sbatch/squeue' if args.scheduler == 'slurm' else 'qsub/qstat'}"
              f" every {FLOOR_POLL_SECONDS} s)")
    return 0 if all(r.get("status", "SUCCEEDED") == "SUCCEEDED" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
