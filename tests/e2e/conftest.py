"""End-to-end fixtures: the local cluster (real sshd, Slurm, Grid Engine) and job configs."""

import textwrap
from pathlib import Path

import pytest

from stepcluster.local.runner import LocalCluster
from stepcluster.remote.ssh import HeadNodeConnection


@pytest.fixture(scope="session")
def local_cluster() -> LocalCluster:
    cluster = LocalCluster()
    try:
        cluster.check()
    except FileNotFoundError as exc:  # `make test` brings it up; running pytest alone may not
        pytest.fail(f"{exc}")
    return cluster


@pytest.fixture
def head_node(local_cluster):
    """An SSH connection to the local head node, for looking at what a run left behind."""
    with HeadNodeConnection(local_cluster.host, local_cluster.port, local_cluster.user,
                            local_cluster.private_key, local_cluster.host_key) as connection:
        yield connection


class ConfigWriter:
    """Writes a jobs config whose jobs are small bash scripts in local folders."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, order: str, jobs: dict[str, str], wait_time: int = 1,
                 wait_times: dict[str, int] | None = None, keys: dict[str, dict[str, str]] | None = None) -> str:
        """`keys`: more `[job NAME]` keys per job (resources), written as given."""
        sections = [f"[order]\n{order} = {', '.join(jobs)}\n"]
        for name, body in jobs.items():
            job_folder = self.folder / "jobs" / name
            job_folder.mkdir(parents=True, exist_ok=True)
            (job_folder / "run.sh").write_text("#!/bin/bash\n" + textwrap.dedent(body).strip() + "\n")
            wait = (wait_times or {}).get(name, wait_time)
            more = "".join(f"{k} = {v}\n" for k, v in (keys or {}).get(name, {}).items())
            sections.append(f"[job {name}]\nhandler = run.sh\nlocal_path = jobs/{name}\nwait_time = {wait}\n{more}")
        path = self.folder / "jobs.ini"
        path.write_text("\n".join(sections))
        return str(path)


@pytest.fixture
def write_config(tmp_path) -> ConfigWriter:
    return ConfigWriter(tmp_path)


def remote_exists(head_node, path: str) -> bool:
    return head_node.run(["test", "-e", path], check=False).exit_code == 0


def abort_at_first_poll(endpoint) -> None:
    """on_start hook: stop the execution (as a user clicking Stop) when it first polls."""
    import boto3

    def fault(name, event):
        if name == "PollJobsFunction":
            boto3.client("stepfunctions").stop_execution(executionArn=event["execution_arn"])
    endpoint.fault = fault


def cleanup_event(execution_arn: str) -> dict:
    """The recorded EventBridge "Execution Status Change" event, for this execution.

    moto delivers no such events to rules, so tests play it to the cluster function."""
    import json

    event = json.loads((Path(__file__).resolve().parents[2] / "events" / "cluster_cleanup.json").read_text())
    event["detail"]["executionArn"] = execution_arn
    return event


def crash_polling(endpoint) -> None:
    """on_start hook: the poll function fails with an error no Retry covers."""
    def fault(name, event):
        if name == "PollJobsFunction":
            raise RuntimeError("simulated crash in the poll function")
    endpoint.fault = fault
