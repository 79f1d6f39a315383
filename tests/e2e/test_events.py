"""Every handler, invoked with its files in events/ (what `sam local invoke -e` would send),
against the local cluster, in the order a run calls them."""

import json
import os
import time
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from stepcluster.config import load_jobs_config
from stepcluster.local.runner import local_environment
from stepcluster.plan import build_plan

from .conftest import remote_exists

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"


def event(name: str) -> dict:
    return json.loads((EVENTS / f"{name}.json").read_text())


@pytest.fixture
def lambda_environment(local_cluster, tmp_path):
    """The environment the template gives the functions, with the example plan deployed; a
    polling round looks once (PollWindowSeconds=0), as events/README.md invokes it."""
    plan = build_plan(load_jobs_config(ROOT / "examples" / "jobs.ini"), tmp_path)
    with local_environment(str(tmp_path), local_cluster, "slurm", {"poll_window_seconds": 0}), mock_aws():
        secret = boto3.client("secretsmanager").create_secret(
            Name="head-node-key", SecretString=local_cluster.private_key)
        os.environ["STEPCLUSTER_SSH_KEY_SECRET_ID"] = secret["ARN"]
        boto3.client("s3").create_bucket(Bucket=os.environ["STEPCLUSTER_ARTIFACTS_BUCKET"])
        yield plan


def test_there_is_an_event_for_every_handler():
    handlers = {p.stem for p in (ROOT / "functions" / "handlers").glob("*.py") if not p.stem.startswith("_")}
    covered = {h for h in handlers if any(EVENTS.glob(f"{h}*.json"))}
    assert covered == handlers


def test_the_create_event_names_the_example_plan(lambda_environment):
    assert event("cluster_create")["run"]["plan_digest"] == lambda_environment.digest


def test_every_handler_runs_with_its_event(lambda_environment, head_node):
    from handlers import (cancel_jobs, cluster, poll_jobs, prepare_head_node, release_head_node,
                          submit_jobs)

    created = cluster.handler(event("cluster_create"), None)
    assert created["cluster"]["status"] == "READY"
    assert cluster.handler(event("cluster_status"), None)["cluster"]["status"] == "READY"

    prepared = prepare_head_node.handler(event("prepare_head_node"), None)
    run_dir = prepared["cluster"]["run_dir"]
    assert run_dir == event("submit_jobs")["cluster"]["run_dir"]
    assert remote_exists(head_node, run_dir)

    submitted = submit_jobs.handler(event("submit_jobs"), None)
    assert submitted["phase"] == "RUNNING"
    assert submitted["jobs"]["prepare"]["state"] == "PENDING" and submitted["jobs"]["prepare"]["job_id"]

    for _ in range(150):   # let prepare finish, so that it has results to keep
        if remote_exists(head_node, f"{run_dir}/jobs/prepare/result"):
            break
        time.sleep(0.1)

    # simulate, as job 999999: unknown to Slurm and no result yet, so still finishing.
    polled = poll_jobs.handler(event("poll_jobs"), None)
    assert polled["phase"] == "RUNNING"
    assert polled["jobs"]["simulate"]["missing_polls"] == 1

    cancelled = cancel_jobs.handler(event("cancel_jobs"), None)
    assert cancelled["jobs"]["simulate"]["state"] == "CANCELLED"
    assert cancelled["jobs"]["report"]["state"] == "NOT_STARTED"

    released = release_head_node.handler(event("release_head_node"), None)
    assert released["cluster"]["run_dir_removed"] is True
    # prepare's stdout/stderr/exit code were kept before the folder went
    kept = boto3.client("s3").list_objects_v2(Bucket=os.environ["STEPCLUSTER_ARTIFACTS_BUCKET"])
    assert "event-test/prepare/stdout" in {o["Key"] for o in kept["Contents"]}
    assert not remote_exists(head_node, run_dir)

    assert cluster.handler(event("cluster_delete"), None)["cluster"]["status"] == "RELEASED"
    assert cluster.handler(event("cluster_deletion_status"), None)["cluster"]["status"] == "RELEASED"
    # An existing head node is never deleted; this run's folder is already gone.
    assert cluster.handler(event("cluster_cleanup"), None) == {
        "execution": event("cluster_cleanup")["detail"]["executionArn"], "clusters": [], "released": {"run_dir": None, "removed": False}}
