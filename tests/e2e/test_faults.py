"""Faults on the real local cluster, mid-run: a daemon stopped by its pid file and started
again the rig's way (scripts/local-cluster.sh stop|start DAEMON)."""

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
