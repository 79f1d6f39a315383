"""The cluster's lifecycle in RunService, with a fake backend whose statuses the test sets and
the run's SSH key in moto: the key is made with the cluster and goes with it, keep_cluster
keeps both, and the abort cleanup deletes what carries the execution's tag."""

import boto3
import pytest
from moto import mock_aws

from stepcluster.clusters.base import ClusterBackend, HeadNode
from stepcluster.config import parse_jobs_config
from stepcluster.errors import InputError
from stepcluster.plan import build_plan
from stepcluster.service import RunService

from functional.test_service import AsTheStateMachineCalls
from stepcluster.settings import Settings

ARN = "arn:aws:states:us-east-1:123456789012:execution:sm:exec-1"


class FakeBackend(ClusterBackend):
    name = "cfncluster"

    def __init__(self):
        self.clusters = {}   # name -> {"status", "tags"}

    def create(self, ctx, key):
        if ctx.cluster_name in self.clusters and self.clusters[ctx.cluster_name]["tag"] != ctx.execution_arn:
            raise InputError(f"cluster name {ctx.cluster_name} is already used")
        self.clusters[ctx.cluster_name] = {"status": "CREATING", "tag": ctx.execution_arn, "key": key.key_name}
        return {"backend": self.name, "name": ctx.cluster_name, "status": "CREATING", "poll_seconds": 1}

    def status(self, cluster):
        return {**cluster, "status": self.clusters[cluster["name"]]["status"]}

    def head_node(self, cluster):
        return HeadNode("127.0.0.1", 22, "u", "slurm", "SHA256:x")

    def delete(self, cluster):
        if cluster["name"] in self.clusters:
            self.clusters[cluster["name"]]["status"] = "DELETING"
            return {**cluster, "status": "DELETING"}
        return {**cluster, "status": "DELETED"}

    def deletion_status(self, cluster):
        state = self.clusters.get(cluster["name"], {"status": "DELETED"})["status"]
        return {**cluster, "status": state}

    def find_clusters(self, execution_arn):
        return [{"name": n} for n, c in self.clusters.items() if c["tag"] == execution_arn]


@pytest.fixture
def service(tmp_path, monkeypatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    (tmp_path / "a.sh").write_text("true\n")
    config = parse_jobs_config("[order]\nsequential = a\n\n[job a]\nhandler = a.sh\nlocal_path = a.sh\n",
                               str(tmp_path / "jobs.ini"), tmp_path)
    (tmp_path / "cluster.ini").write_text("[cluster default]\n")
    plan = build_plan(config, tmp_path / "plan", backend="cfncluster", cluster_config=tmp_path / "cluster.ini")
    with mock_aws():
        backend = FakeBackend()
        yield AsTheStateMachineCalls(RunService(
            Settings(backend="cfncluster", resource_prefix="stepcluster/stack"),
            plan=plan, backend=backend)), backend


def start(service, **extra):
    svc, _ = service
    return svc.create_cluster({"input": {"cluster_name": "c1", **extra}, "execution": "exec-1",
                               "execution_arn": ARN, "plan_digest": svc.plan.digest})


def resources():
    return (len(boto3.client("ec2").describe_key_pairs()["KeyPairs"]),
            len(boto3.client("secretsmanager").list_secrets()["SecretList"]))


def test_the_run_key_is_made_with_the_cluster_and_deleted_once_it_is_gone(service):
    svc, backend = service
    run = start(service)
    assert run["cluster"]["key"]["owned"] and resources() == (1, 1)
    assert backend.clusters["c1"]["key"] == run["cluster"]["key"]["key_name"]
    run = svc.delete_cluster(run)
    assert run["cluster"]["status"] == "DELETING" and resources() == (1, 1)  # still in use
    backend.clusters.pop("c1")
    run = svc.deletion_status(run)
    assert run["cluster"]["status"] == "DELETED" and resources() == (0, 0)


def test_keep_cluster_keeps_it_after_a_success_only(service):
    svc, backend = service
    run = start(service, keep_cluster=True)
    kept = svc.delete_cluster({**run, "phase": "SUCCEEDED"})
    assert kept["cluster"]["status"] == "KEPT" and backend.clusters["c1"]["status"] == "CREATING"
    failed = svc.delete_cluster({**run, "phase": "FAILED", "failure": {"Error": "JobFailed"}})
    assert failed["cluster"]["status"] == "DELETING"


def test_a_user_key_is_used_and_never_deleted(service, tmp_path):
    svc, backend = service
    svc.settings = Settings(backend="cfncluster", ssh_key_name="mine", ssh_key_secret_id="arn:secret:mine")
    run = start(service)
    assert run["cluster"]["key"] == {"key_name": "mine", "secret_arn": "arn:secret:mine", "owned": False}
    backend.clusters.clear()
    assert svc.deletion_status(svc.delete_cluster(run))["cluster"]["status"] == "DELETED"
    assert resources() == (0, 0)


def test_the_abort_cleanup_deletes_what_carries_the_execution_tag(service):
    svc, backend = service
    start(service)
    backend.clusters["other"] = {"status": "READY", "tag": "another execution", "key": None}
    result = svc.cleanup_execution(ARN)
    assert result["clusters"] == [{"name": "c1", "status": "DELETING"}]
    assert backend.clusters["other"]["status"] == "READY"
    assert resources() == (0, 0)
    assert svc.cleanup_execution(ARN)["clusters"] == [{"name": "c1", "status": "DELETING"}]  # again: harmless


def test_a_name_used_by_another_live_cluster_fails_fast(service):
    svc, backend = service
    backend.clusters["c1"] = {"status": "READY", "tag": "another execution", "key": None}
    with pytest.raises(InputError, match="already used"):
        start(service)
    assert resources() == (0, 0)  # the key made for the attempt is gone too
