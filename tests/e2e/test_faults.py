"""Faults on the real local cluster, mid-run: a daemon stopped by its pid file and started
again the rig's way (scripts/local-cluster.sh stop|start DAEMON)."""

import json
import subprocess
import threading
from pathlib import Path

import pytest

from stepcluster.local import runner

pytestmark = pytest.mark.e2e
RIG = Path(__file__).resolve().parents[2] / "scripts" / "local-cluster.sh"


def rig(*args: str) -> None:
    subprocess.run([str(RIG), *args], check=True, capture_output=True, timeout=120)


def at_first_call(function: str, action):
    """on_start hook: run `action(event)` when the state machine first calls `function`."""
    def hook(endpoint):
        done = []

        def fault(name, event):
            if name == function and not done:
                done.append(True)
                action(event)
        endpoint.fault = fault
    return hook


@pytest.mark.parametrize("scheduler, daemon, seconds", [("slurm", "slurmctld", 60), ("sge", "sge_qmaster", 30)])
def test_a_controller_outage_mid_run_is_waited_out_and_the_jobs_succeed(
        scheduler, daemon, seconds, local_cluster, write_config):
    """The controller stops when the first poll comes and starts again `seconds` later:
    one job ends while it is down (its result file is seen anyway), one outlives the outage.
    Before, the first failing squeue/qstat failed the run and cancelled both healthy jobs."""
    lines, restarted = [], threading.Event()

    def outage(event):
        rig("stop", daemon)
        threading.Timer(seconds, lambda: (rig("start", daemon), restarted.set())).start()

    config = write_config("parallel", {"short": f"sleep {seconds // 3}", "long": f"sleep {seconds + 15}"},
                          wait_time=2)
    try:
        report = runner.run_local(config, f"outage-{scheduler}", scheduler=scheduler, cluster=local_cluster,
                                  on_start=at_first_call("PollJobsFunction", outage), progress=lines.append,
                                  timeout=seconds + 240)
    finally:
        restarted.wait(seconds + 30)
        rig("start", daemon)                    # whatever happened: the rig is whole again
    assert report.status == "SUCCEEDED", report.cause
    assert {job["name"]: (job["state"], job["exit_code"]) for job in report.jobs} == {
        "short": ("SUCCEEDED", 0), "long": ("SUCCEEDED", 0)}
    said = [line for line in lines if "the scheduler does not answer" in line]
    assert said and any("the scheduler answers again" in line for line in lines), lines


def test_a_job_whose_node_is_lost_fails_the_run_within_the_blocked_timeout(local_cluster, write_config, head_node):
    """slurmd stopped (in the cloud: a spot interruption, a failed instance) and the node DOWN
    ("Not responding") when the job is submitted: Slurm keeps it PENDING "Nodes required for job
    are DOWN, DRAINED or reserved for jobs in higher priority partitions". Before, that was
    polled for ever (248 polls in 330 s, the cluster billing); now it counts as blocked: the run
    fails after BlockedJobTimeoutSeconds with Slurm's reason and leaves nothing in the queue.
    (A job already running when its node is lost is requeued by Slurm, eligible again 2 minutes
    later, and then blocked the same way: slower, so not played here.)"""
    import time

    from stepcluster.schedulers import Category

    from .test_workflows import scheduler_view

    def node_down(connection):
        return "down" in connection.run(["sinfo", "-h", "-n", "localhost", "-o", "%T"]).stdout

    def lose_the_node(event):
        rig("stop", "slurmd")
        deadline = time.monotonic() + 90
        while not node_down(head_node):
            assert time.monotonic() < deadline, "the node did not go DOWN"
            time.sleep(1)

    config = write_config("sequential", {"stranded": "true"}, wait_time=2)
    try:
        report = runner.run_local(config, "node-lost", scheduler="slurm", cluster=local_cluster,
                                  on_start=at_first_call("SubmitJobsFunction", lose_the_node), timeout=240,
                                  settings_overrides={"blocked_job_timeout_seconds": 5})
    finally:
        rig("start", "slurmd")
    assert report.status == "FAILED", report.cause
    assert "'stranded'" in report.cause and "Nodes required for job are DOWN" in report.cause
    assert "did not within 5 s" in report.cause
    job_id = report.jobs[0]["job_id"]
    assert scheduler_view(head_node, "slurm", [job_id])[job_id].category not in (Category.QUEUED, Category.RUNNING)


@pytest.mark.parametrize("scheduler, daemon", [("slurm", "slurmctld"), ("sge", "sge_qmaster")])
def test_a_submit_during_a_controller_outage_is_retried_until_it_is_back(scheduler, daemon, local_cluster, write_config):
    """The controller stops just before Submit Jobs and starts again 20 s later: sbatch/qsub say
    they cannot reach it, the definition retries, the job is submitted once and succeeds."""
    restarted = threading.Event()

    def outage(event):
        rig("stop", daemon)
        threading.Timer(20, lambda: (rig("start", daemon), restarted.set())).start()

    config = write_config("sequential", {"late": "echo ran"}, wait_time=1)
    try:
        report = runner.run_local(config, f"submit-outage-{scheduler}", scheduler=scheduler,
                                  cluster=local_cluster, on_start=at_first_call("SubmitJobsFunction", outage), timeout=300)
    finally:
        restarted.wait(60)
        rig("start", daemon)
    assert report.status == "SUCCEEDED", report.cause
    assert report.jobs[0]["state"] == "SUCCEEDED"
    assert report.invocations["SubmitJobsFunction"] >= 2          # refused while down, then retried


def test_a_head_node_gone_for_good_fails_the_run_saying_what_was_kept_and_what_may_still_run(
        local_cluster, write_config, head_node, tmp_path):
    """sshd stops for good once a round has seen the quick job end (and kept its results). Before,
    the run failed after 65 s with a raw Lambda error JSON and a stack trace as its cause, and kept
    nothing. Now the cause is sentences: the poll's error, what was kept and where, which job may
    still run and in which folder; the quick job's results are in the bucket."""
    stopped = []

    def fault(name, event):
        jobs = event.get("jobs") or {}
        if name == "PollJobsFunction" and not stopped and (jobs.get("quick") or {}).get("state") == "SUCCEEDED":
            stopped.append(True)
            rig("stop", "sshd")

    config = write_config("parallel", {"quick": 'echo kept > "$STEPCLUSTER_OUTPUT/quick.txt"; echo quick',
                                       "long": "sleep 600"}, wait_time=1)
    artifacts = tmp_path / "artifacts"
    report = None
    try:
        report = runner.run_local(config, "sshd-gone", cluster=local_cluster, timeout=400,
                                  on_start=lambda endpoint: setattr(endpoint, "fault", fault),
                                  artifacts_dir=artifacts)
    finally:
        rig("start", "sshd")
        if report is not None:                   # the job it could not cancel, and its folder
            long_id = next(j["job_id"] for j in report.jobs if j["name"] == "long")
            head_node.run(["scancel", long_id], check=False)
            head_node.run(["bash", "-c", f"rm -rf -- ~/stepcluster-runs/{report.execution_arn.rsplit(':', 1)[-1]}"])
    assert stopped and report.status == "FAILED", report.cause
    cause = report.cause
    assert cause.startswith("cannot reach head node hpc@127.0.0.1:2222"), cause
    execution = report.execution_arn.rsplit(":", 1)[-1]
    assert (f"Not kept: the results of job 'long'; kept: those of job 'quick' (kept under "
            f"s3://{runner.ARTIFACTS_BUCKET}/{execution}/)") in cause
    assert f"Jobs 'long' (slurm job {long_id}) may still be running on the head node: they were not cancelled" in cause
    assert "Traceback" not in cause and "errorMessage" not in cause
    assert (artifacts / execution / "quick" / "stdout").read_text() == "quick\n"
    assert (artifacts / execution / "quick" / "output" / "quick.txt").read_text() == "kept\n"
    manifest = json.loads((artifacts / execution / "manifest.json").read_text())
    assert manifest["jobs"]["quick"]["state"] == "SUCCEEDED" and manifest["jobs"]["long"]["results"] is None

