"""Ctrl-C to `stepcluster run-local`, as a user presses it: SIGINT to the real command in a
subprocess, mid-run, with a job running on the local Slurm. The first Ctrl-C must do what AWS
does when an execution is stopped (the EventBridge rule's cleanup: jobs cancelled, results kept,
folder removed); a second one exits at once, saying what may be left, and `stepcluster cleanup
EXECUTION` finishes it afterwards. Before, run-local returned 130 and left the jobs running."""

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stepcluster import jobscripts
from stepcluster.schedulers import Category, get_scheduler

from .conftest import remote_exists
from .test_workflows import scheduler_view

pytestmark = pytest.mark.e2e

LONG = 'echo long-started; echo partial > "$STEPCLUSTER_OUTPUT/partial.txt"; sleep 300'
QUICK = "echo quick-out"


def stepcluster_command() -> list[str]:
    """The installed entry point beside this Python (.venv/bin/stepcluster), else the module."""
    entry = Path(sys.executable).with_name("stepcluster")
    return [str(entry)] if entry.exists() else [sys.executable, "-m", "stepcluster.cli"]


def _sigint_as_by_default():
    """In the child: SIGINT handled by default, as in a terminal, even if this test process was
    started with it ignored (a background job of a non-interactive shell): Python then installs
    its KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Command:
    """`stepcluster ARGS` in a subprocess; its output (stdout and stderr) read as it comes."""

    def __init__(self, *args: str):
        self.argv = [*stepcluster_command(), *args]
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                     preexec_fn=_sigint_as_by_default)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first match of `pattern` in the output, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = re.search(pattern, "\n".join(self.lines))
                if match:
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    pytest.fail(f"no {pattern!r} within {timeout} s in the output of "
                                f"{shlex.join(self.argv)}:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 0.5))

    def exit_code(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def started(write_config, tmp_path, head_node, local_cluster):
    """run-local of a long job and a quick one (parallel), once the long one runs and the quick
    one has succeeded; everything it might leave is removed afterwards, by job id and path."""
    seen = {"commands": [], "job_ids": [], "run_dir": None, "scheduler": "slurm"}
    head_node_user = local_cluster.user
    config = write_config("parallel", {"long": LONG, "quick": QUICK}, wait_time=1)
    artifacts = tmp_path / "artifacts"

    def start(scheduler: str = "slurm") -> dict:
        seen["scheduler"] = scheduler
        run = Command("run-local", config, "--cluster-name", "interrupt", "--artifacts-dir", str(artifacts),
                      "--timeout", "600", "--scheduler", scheduler)
        seen["commands"].append(run)
        execution = run.wait_for(r"execution (local-\d{8}-\d{6}-[0-9a-f]{6}) started", 60).group(1)
        seen["run_dir"] = f"/home/{head_node_user}/stepcluster-runs/{execution}"
        job_id = run.wait_for(r"job long: RUNNING \(job (\d+)\)", 120).group(1)
        seen["job_ids"].append(job_id)
        run.wait_for(r"job quick: SUCCEEDED", 60)
        partial = f"{jobscripts.job_dir(seen['run_dir'], 'long')}/output/partial.txt"
        deadline = time.monotonic() + 30
        while not remote_exists(head_node, partial):           # the long job's partial result
            assert time.monotonic() < deadline, f"{partial} never appeared"
            time.sleep(0.5)
        return {"run": run, "execution": execution, "job_id": job_id, "run_dir": seen["run_dir"],
                "artifacts": artifacts}

    try:
        yield start
    finally:
        for command in seen["commands"]:
            command.kill()
        if seen["job_ids"]:
            head_node.run(get_scheduler(seen["scheduler"]).cancel_argv(seen["job_ids"]), check=False)
        if seen["run_dir"]:
            head_node.run(["rm", "-rf", "--", seen["run_dir"]], check=False)


def gone_from_the_queue(head_node, job_id: str, scheduler: str = "slurm", timeout: float = 30) -> bool:
    """Whether the scheduler no longer has the job queued or running (a cancel takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        category = scheduler_view(head_node, scheduler, [job_id])[job_id].category
        if category not in (Category.QUEUED, Category.RUNNING):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1)


@pytest.mark.parametrize("scheduler", ["slurm", "sge"])
def test_ctrl_c_cancels_the_jobs_keeps_the_results_and_removes_the_folder(scheduler, started, head_node):
    run = started(scheduler)
    run["run"].proc.send_signal(signal.SIGINT)
    code = run["run"].exit_code(timeout=120)
    out = run["run"].output

    assert code == 130, out
    assert f"cancelled: long (job {run['job_id']})" in out, out
    assert f"removed {run['run_dir']} on the head node" in out, out
    assert re.search(rf"results kept: (long, quick|quick, long) in s3://stepcluster-local-artifacts/"
                     rf"{run['execution']}/", out), out
    assert "ABORTED: Interrupted: run-local was interrupted (Ctrl-C)" in out, out
    assert re.search(rf"long\s+{run['job_id']}\s+CANCELLED", out), out   # the report, as the cleanup left it
    assert gone_from_the_queue(head_node, run["job_id"], scheduler)
    if scheduler == "slurm":
        assert head_node.run(["squeue", "-h", "-j", run["job_id"]], check=False).stdout.strip() == ""
    assert not remote_exists(head_node, run["run_dir"])
    kept = run["artifacts"] / run["execution"]
    assert (kept / "quick" / "stdout").read_text() == "quick-out\n"
    assert (kept / "long" / "output" / "partial.txt").read_text() == "partial\n"
    assert (kept / "long" / "stdout").read_text() == "long-started\n"
    assert (kept / "manifest.json").exists()


def test_a_second_ctrl_c_exits_at_once_and_stepcluster_cleanup_finishes_the_job(started, head_node):
    run = started()
    proc = run["run"].proc
    proc.send_signal(signal.SIGINT)
    run["run"].wait_for(r"Ctrl-C: stopping execution", 30)    # from here on, the cleanup runs
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    code = run["run"].exit_code(timeout=30)
    waited = time.monotonic() - sent
    out = run["run"].output

    assert code == 130, out
    assert waited < 10, f"took {waited:.1f} s to exit after the second Ctrl-C"
    assert "Ctrl-C again: exiting now, the cleanup did not finish." in out, out
    assert f"its folder ~/stepcluster-runs/{run['execution']} on hpc@127.0.0.1:2222" in out, out
    told = re.search(r"finish the cleanup with: (.*)", out).group(1)
    assert shlex.split(told) == ["stepcluster", "cleanup", run["execution"], "--artifacts-dir", str(run["artifacts"])]
    assert "ABORTED: Interrupted" not in out       # no report: it exited at once

    artifacts = run["artifacts"]
    cleanup = Command(*shlex.split(told)[1:])       # the command it said, as a user would paste it
    code = cleanup.exit_code(timeout=120)
    assert code == 0, cleanup.output
    assert gone_from_the_queue(head_node, run["job_id"])
    assert not remote_exists(head_node, run["run_dir"])
    if f"removed {run['run_dir']} on the head node" in cleanup.output:
        # the second Ctrl-C came before the first cleanup removed the folder (the usual case):
        # this cleanup kept the results and wrote them as run-local would have
        kept = artifacts / run["execution"]
        assert (kept / "quick" / "stdout").read_text() == "quick-out\n"
        assert (kept / "long" / "output" / "partial.txt").read_text() == "partial\n"
    else:
        assert f"nothing of {run['execution']} on the head node" in cleanup.output, cleanup.output

    again = Command("cleanup", run["execution"])                # idempotent: nothing left, exit 0
    assert again.exit_code(timeout=60) == 0, again.output
    assert f"nothing of {run['execution']} on the head node" in again.output
