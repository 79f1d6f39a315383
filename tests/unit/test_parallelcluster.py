"""The ParallelCluster backend at pcluster.lib's boundary, and the offline config check.

pcluster.lib cannot create a cluster against moto (AMI lookup, validators, CDK), so the backend
gets a fake `pcluster.lib` whose functions take kwargs only, return the recorded response shapes
(tests/fixtures/parallelcluster/) and raise pcluster's real exception classes, built the way
pcluster builds them.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from stepcluster.clusters.base import EXECUTION_TAG, HeadNode, RunContext, SshKey
from stepcluster.clusters.parallelcluster import ParallelClusterBackend
from stepcluster.clusters.parallelcluster_config import (check_parallelcluster_config,
                                                         load_parallelcluster_config)
from stepcluster.errors import ClusterError, ConfigError, InputError

errors = pytest.importorskip("pcluster.api.errors")
from pcluster.api.models import ConfigValidationMessage, ValidationLevel  # noqa: E402
from pcluster.api.models.create_cluster_bad_request_exception_response_content import (  # noqa: E402
    CreateClusterBadRequestExceptionResponseContent,
)
from pcluster.cli.exceptions import ParameterException  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "parallelcluster"
EXAMPLE = ROOT / "examples" / "parallelcluster.yaml"
ARN = "arn:aws:states:us-east-1:123456789012:execution:stepcluster-Run:run-1"
OTHER_ARN = "arn:aws:states:us-east-1:123456789012:execution:stepcluster-Run:run-2"
INSTANCE = "i-25796155e2af8817d"  # the head node in the recorded describes
CONSOLE = (FIXTURES / "console_output.txt").read_text()
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeEd25519KeyForTestsOnly0123456789abcd"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def not_found(name: str):
    return errors.NotFoundException(
        f"Cluster '{name}' does not exist or belongs to an incompatible ParallelCluster major version.")


class FakePcluster:
    """pcluster.lib as the backend sees it: kwargs only, recorded shapes, real exceptions."""

    def __init__(self, clusters: dict | None = None):
        self.clusters = {k: copy.deepcopy(v) for k, v in (clusters or {}).items()}
        self.calls: list[tuple[str, dict]] = []
        self.create_error = None
        self.delete_error = None
        self.describe_error = None
        self.page_size = 100

    def _record(self, fn, kwargs):
        # The real lib coerces every given argument: None breaks it, so none may be passed.
        assert all(v is not None for v in kwargs.values()), kwargs
        self.calls.append((fn, copy.deepcopy(kwargs)))

    def describe_cluster(self, **kwargs):
        self._record("describe_cluster", kwargs)
        if self.describe_error:
            raise self.describe_error
        name = kwargs["cluster_name"]
        if name not in self.clusters:
            raise not_found(name)
        return copy.deepcopy(self.clusters[name])

    def create_cluster(self, **kwargs):
        self._record("create_cluster", kwargs)
        assert "wait" not in kwargs
        assert isinstance(kwargs["cluster_configuration"], dict)  # a str would be a file path
        if self.create_error:
            raise self.create_error
        name = kwargs["cluster_name"]
        described = fixture("describe_create_in_progress.json")
        described["clusterName"] = name
        described["tags"] = [{"key": "parallelcluster:version", "value": "3.16.1"}] + [
            {"key": t["Key"], "value": t["Value"]} for t in kwargs["cluster_configuration"].get("Tags", [])]
        self.clusters[name] = described
        response = fixture("create_cluster_response.json")
        response["cluster"]["clusterName"] = name
        return response

    def delete_cluster(self, **kwargs):
        self._record("delete_cluster", kwargs)
        if self.delete_error:
            raise self.delete_error
        name = kwargs["cluster_name"]
        if name not in self.clusters:
            raise errors.NotFoundException(
                f"Cluster '{name}' does not exist or belongs to an incompatible ParallelCluster major "
                "version. In case you have running instances belonging to a deleted cluster please use "
                "the DeleteClusterInstances API.")
        self.clusters[name]["clusterStatus"] = "DELETE_IN_PROGRESS"
        self.clusters[name]["cloudFormationStackStatus"] = "DELETE_IN_PROGRESS"
        return fixture("delete_cluster_response.json")

    def list_clusters(self, **kwargs):
        self._record("list_clusters", kwargs)
        names = sorted(self.clusters)
        start = int(kwargs.get("next_token") or 0)
        page = names[start:start + self.page_size]
        result = {"clusters": [{
            "clusterName": n, "clusterStatus": self.clusters[n]["clusterStatus"],
            "cloudformationStackStatus": self.clusters[n]["cloudFormationStackStatus"],
            "cloudformationStackArn": self.clusters[n]["cloudformationStackArn"],
            "region": "us-east-1", "version": "3.16.1", "scheduler": {"type": "slurm"}} for n in page]}
        if start + self.page_size < len(names):
            result["nextToken"] = str(start + self.page_size)
        return result

    def called(self, fn):
        return [kwargs for name, kwargs in self.calls if name == fn]


class FakeEc2:
    """Only what hostkeys.read_host_key uses."""

    class exceptions:  # noqa: N801 - mirrors boto3's client.exceptions
        ClientError = type("ClientError", (Exception,), {})

    def __init__(self, output=CONSOLE):
        self.output = output
        self.calls = []

    def get_console_output(self, **kwargs):
        self.calls.append(kwargs)
        return {"InstanceId": kwargs["InstanceId"], "Output": self.output}


def settings(**overrides):
    values = dict(region="us-east-1", cluster_poll_seconds=30, create_timeout_seconds=3600,
                  use_public_address=False, head_node_port=22)
    values.update(overrides)
    return SimpleNamespace(**values)


USER_CONFIG = {
    "Region": "us-east-1",
    "Image": {"Os": "alinux2023"},
    "HeadNode": {"InstanceType": "t3.medium", "Networking": {"SubnetId": "subnet-0123456789abcdef0"}},
    "Scheduling": {"Scheduler": "slurm", "SlurmQueues": [{
        "Name": "compute", "Networking": {"SubnetIds": ["subnet-0123456789abcdef0"]},
        "ComputeResources": [{"Name": "c5large", "InstanceType": "c5.large", "MinCount": 0, "MaxCount": 4}]}]},
    "Tags": [{"Key": "project", "Value": "genomics"},
             {"Key": EXECUTION_TAG, "Value": "stale-value"}],
}
CTX = RunContext(execution="run-1", execution_arn=ARN, cluster_name="demo")
KEY = SshKey(key_name="stepcluster-run-1", secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:k",
             owned=True)


def backend(pc=None, ec2=None, config=None, **overrides):
    return ParallelClusterBackend(settings(**overrides), pcluster=pc if pc is not None else FakePcluster(),
                                  ec2_client=ec2 if ec2 is not None else FakeEc2(),
                                  cluster_config=copy.deepcopy(config or USER_CONFIG))


def creating_record(**extra):
    record = {"backend": "parallelcluster", "name": "demo", "status": "CREATING", "poll_seconds": 30,
              "created_at": int(time.time()) - 60, "create_timeout_seconds": 3600, "execution_arn": ARN}
    record.update(extra)
    return record


# ------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name", ["ab", "demo", "Run-42", "a" * 60])
def test_check_name_accepts_parallelcluster_names(name):
    assert backend().check_name(name) == name


@pytest.mark.parametrize("name", ["a", "a" * 61, "1abc", "-abc", "bad_name", "has space", "", None, 42,
                                  "demo\n", "ab\n"])
def test_check_name_refuses_with_the_rule(name):
    with pytest.raises(InputError, match="2 to 60 characters, start with a letter"):
        backend().check_name(name)


# ------------------------------------------------------------------------------------ create
def test_create_passes_our_key_and_tag_and_keeps_the_users_config():
    pc = FakePcluster()
    user_config = copy.deepcopy(USER_CONFIG)
    b = ParallelClusterBackend(settings(), pcluster=pc, ec2_client=FakeEc2(), cluster_config=user_config)
    before = time.time()
    record = b.create(CTX, KEY)

    (call,) = pc.called("create_cluster")
    assert set(call) == {"cluster_name", "cluster_configuration", "region", "rollback_on_failure"}
    assert call["cluster_name"] == "demo" and call["region"] == "us-east-1"
    assert call["rollback_on_failure"] is False
    config = call["cluster_configuration"]
    assert config["HeadNode"]["Ssh"] == {"KeyName": "stepcluster-run-1"}
    assert config["Tags"] == [{"Key": "project", "Value": "genomics"}, {"Key": EXECUTION_TAG, "Value": ARN}]
    assert config["Scheduling"] == USER_CONFIG["Scheduling"]
    # the user's dict is untouched
    assert user_config == USER_CONFIG and b.cluster_config == USER_CONFIG

    assert record == {
        "backend": "parallelcluster", "name": "demo", "status": "CREATING", "poll_seconds": 30,
        "created_at": record["created_at"], "create_timeout_seconds": 3600, "execution_arn": ARN,
        "stack_arn": "arn:aws:cloudformation:us-east-1:123456789012:stack/demo/"
                     "1e94b1bf-bdc9-432c-8ed2-7aa9b14db074"}
    assert before - 1 <= record["created_at"] <= time.time()
    # it looked first (idempotency), then created
    assert [name for name, _ in pc.calls] == ["describe_cluster", "create_cluster"]


def test_create_replaces_a_users_key_name_and_adds_tags_when_none():
    config = copy.deepcopy(USER_CONFIG)
    config["HeadNode"]["Ssh"] = {"KeyName": "users-key", "AllowedIps": "10.0.0.0/8"}
    del config["Tags"]
    pc = FakePcluster()
    backend(pc, config=config).create(CTX, KEY)
    sent = pc.called("create_cluster")[0]["cluster_configuration"]
    assert sent["HeadNode"]["Ssh"] == {"KeyName": "stepcluster-run-1", "AllowedIps": "10.0.0.0/8"}
    assert sent["Tags"] == [{"Key": EXECUTION_TAG, "Value": ARN}]


def test_create_without_any_key_refuses():
    with pytest.raises(ClusterError, match="no SSH key pair"):
        backend().create(CTX, SshKey(key_name=None, secret_arn="s", owned=False))


def test_create_keeps_a_users_key_name_when_the_run_has_none():
    config = copy.deepcopy(USER_CONFIG)
    config["HeadNode"]["Ssh"] = {"KeyName": "users-key"}
    pc = FakePcluster()
    backend(pc, config=config).create(CTX, SshKey(key_name=None, secret_arn="s", owned=False))
    assert pc.called("create_cluster")[0]["cluster_configuration"]["HeadNode"]["Ssh"]["KeyName"] == "users-key"


def test_create_without_region_omits_the_kwarg():
    config = copy.deepcopy(USER_CONFIG)
    del config["Region"]
    pc = FakePcluster()
    backend(pc, config=config, region=None).create(CTX, KEY)
    assert "region" not in pc.called("create_cluster")[0]
    assert "region" not in pc.called("describe_cluster")[0]


def test_retried_create_adopts_the_cluster_this_execution_started():
    pc = FakePcluster()
    b = backend(pc)
    first = b.create(CTX, KEY)
    again = b.create(CTX, KEY)
    assert len(pc.called("create_cluster")) == 1
    assert again["status"] == "CREATING" and again["name"] == "demo"
    assert again["stack_arn"] == first["stack_arn"]
    # created_at comes from the cluster's creationTime, so the timeout still counts from then
    assert again["created_at"] == 1796002890  # 2026-11-30T01:41:30Z


def test_create_refuses_a_name_used_by_another_cluster():
    taken = fixture("describe_create_complete.json")
    taken["tags"] = [t for t in taken["tags"] if t["key"] != EXECUTION_TAG]
    pc = FakePcluster({"demo": taken})
    with pytest.raises(InputError, match=r"cluster name demo is already used by another cluster "
                                         r"\(CREATE_COMPLETE, not made by stepcluster\)"):
        backend(pc).create(CTX, KEY)
    assert not pc.called("create_cluster")


def test_create_refuses_a_name_used_by_another_execution():
    theirs = fixture("describe_create_complete.json")
    for tag in theirs["tags"]:
        if tag["key"] == EXECUTION_TAG:
            tag["value"] = OTHER_ARN
    with pytest.raises(InputError, match=f"already used by another cluster .*started by {OTHER_ARN}"):
        backend(FakePcluster({"demo": theirs})).create(CTX, KEY)


def test_create_validation_error_becomes_a_readable_cluster_error():
    pc = FakePcluster()
    pc.create_error = errors.CreateClusterBadRequestException(CreateClusterBadRequestExceptionResponseContent(
        configuration_validation_errors=[
            ConfigValidationMessage(level=ValidationLevel.from_dict("WARNING"), type="AmiOsCompatibleValidator",
                                    message="Could not check node AMI OS compatibility."),
            ConfigValidationMessage(level=ValidationLevel.from_dict("ERROR"), type="KeyPairValidator",
                                    message="The key pair 'stepcluster-run-1' does not exist. " + "x" * 2000),
        ],
        message="Invalid cluster configuration."))
    with pytest.raises(ClusterError) as raised:
        backend(pc).create(CTX, KEY)
    message = str(raised.value)
    assert message.startswith("ParallelCluster refused to create cluster demo: Invalid cluster configuration: "
                              "[ERROR/KeyPairValidator] The key pair 'stepcluster-run-1' does not exist.")
    assert "[WARNING/AmiOsCompatibleValidator] Could not check" in message
    assert len(message) < 1200  # each item bounded


def test_create_api_errors_carry_the_message_never_empty():
    pc = FakePcluster()
    pc.create_error = errors.InternalServiceException(
        "Unable to find node executable. Node.js is required by the AWS CDK library used by ParallelCluster")
    with pytest.raises(ClusterError, match="demo: Unable to find node executable"):
        backend(pc).create(CTX, KEY)

    pc = FakePcluster()
    pc.create_error = errors.BadRequestException("region is set in both parameter and configuration and conflicts.")
    with pytest.raises(ClusterError, match="Bad Request: region is set in both parameter"):
        backend(pc).create(CTX, KEY)

    pc = FakePcluster()
    pc.create_error = ParameterException({"message": "Bad Request: 'x' does not match '^[a-zA-Z][a-zA-Z0-9-]+$'"})
    with pytest.raises(ClusterError, match="does not match"):
        backend(pc).create(CTX, KEY)


def test_describe_errors_other_than_not_found_are_cluster_errors():
    pc = FakePcluster()
    pc.describe_error = errors.LimitExceededException("Rate exceeded")
    with pytest.raises(ClusterError, match="describing cluster demo: Rate exceeded"):
        backend(pc).create(CTX, KEY)


# ------------------------------------------------------------------------------------ status
def test_in_progress_is_creating():
    pc = FakePcluster({"demo": fixture("describe_create_in_progress.json")})
    record = backend(pc).status(creating_record())
    assert record["status"] == "CREATING" and "reason" not in record
    assert pc.called("describe_cluster") == [{"cluster_name": "demo", "region": "us-east-1"}]


def test_in_progress_past_the_timeout_fails():
    pc = FakePcluster({"demo": fixture("describe_create_in_progress.json")})
    record = backend(pc).status(creating_record(created_at=int(time.time()) - 3700))
    assert record["status"] == "FAILED"
    assert record["reason"] == "cluster demo not ready after 60 minutes: still CREATE_IN_PROGRESS"


def test_complete_is_ready_with_the_private_address_user_and_pinned_key():
    pc = FakePcluster({"demo": fixture("describe_create_complete.json")})
    ec2 = FakeEc2()
    b = backend(pc, ec2)
    record = b.status(creating_record(reason="waiting for head node i-x to print its SSH host keys"))
    assert record["status"] == "READY" and "reason" not in record
    assert record["head_node"] == {"host": "10.0.0.4", "port": 22, "user": "ec2-user", "scheduler": "slurm",
                                   "host_key": ED25519}
    assert ec2.calls == [{"InstanceId": INSTANCE, "Latest": True}]
    assert b.head_node(record) == HeadNode("10.0.0.4", 22, "ec2-user", "slurm", ED25519)


def test_public_address_when_configured():
    described = fixture("describe_create_complete.json")
    described["headNode"]["publicIpAddress"] = "203.0.113.7"
    record = backend(FakePcluster({"demo": described}), use_public_address=True, head_node_port=2222) \
        .status(creating_record())
    assert record["head_node"]["host"] == "203.0.113.7" and record["head_node"]["port"] == 2222


def test_public_address_missing_is_a_cluster_error():
    pc = FakePcluster({"demo": fixture("describe_create_complete.json")})
    with pytest.raises(ClusterError, match=f"head node {INSTANCE} of cluster demo has no public IP address"):
        backend(pc, use_public_address=True).status(creating_record())


@pytest.mark.parametrize("os_name,user", [("alinux2023", "ec2-user"), ("rhel9", "ec2-user"),
                                          ("ubuntu2204", "ubuntu"), ("ubuntu2404", "ubuntu"),
                                          ("rocky8", "rocky")])
def test_user_follows_the_os(os_name, user):
    config = copy.deepcopy(USER_CONFIG)
    config["Image"]["Os"] = os_name
    pc = FakePcluster({"demo": fixture("describe_create_complete.json")})
    assert backend(pc, config=config).status(creating_record())["head_node"]["user"] == user


def test_host_key_not_printed_yet_stays_creating():
    pc = FakePcluster({"demo": fixture("describe_create_complete.json")})
    record = backend(pc, FakeEc2(output="[    0.000000] Linux version 6.1\n")).status(creating_record())
    assert record["status"] == "CREATING" and "head_node" not in record
    assert record["reason"] == f"waiting for head node {INSTANCE} to print its SSH host keys"


def test_host_key_never_printed_fails_at_the_timeout():
    pc = FakePcluster({"demo": fixture("describe_create_complete.json")})
    record = backend(pc, FakeEc2(output="")).status(creating_record(created_at=int(time.time()) - 4000))
    assert record["status"] == "FAILED"
    assert record["reason"].startswith("cluster demo not ready after 60 minutes: the head node "
                                       f"{INSTANCE} never printed its SSH host keys")


def test_create_failed_reports_the_failure_reason():
    pc = FakePcluster({"demo": fixture("describe_create_failed.json")})
    record = backend(pc).status(creating_record())
    assert record["status"] == "FAILED"
    assert record["reason"] == ("cluster demo is CREATE_FAILED (stack ROLLBACK_COMPLETE): "
                                "HeadNodeBootstrapFailure: Failed to set up the head node.")


def test_deleted_while_creating_fails():
    pc = FakePcluster({"demo": fixture("describe_delete_in_progress.json")})
    record = backend(pc).status(creating_record())
    assert record["status"] == "FAILED" and record["reason"] == "cluster demo is DELETE_IN_PROGRESS"


def test_disappeared_while_creating_fails():
    record = backend(FakePcluster()).status(creating_record())
    assert record["status"] == "FAILED" and "disappeared" in record["reason"]


def test_head_node_of_a_record_that_is_not_ready():
    with pytest.raises(ClusterError, match="not ready"):
        backend().head_node(creating_record())


def test_host_key_read_from_a_moto_instance_console(monkeypatch):
    """The real boto3 -> moto path of GetConsoleOutput (Latest=True, base64 decoding). moto has no
    API to set an instance's console output; its response text is a module constant."""
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    import moto.ec2.responses.general as general

    with moto.mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        image = ec2.describe_images()["Images"][0]["ImageId"]
        instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.medium")
        instance_id = instance["Instances"][0]["InstanceId"]
        described = fixture("describe_create_complete.json")
        described["headNode"]["instanceId"] = instance_id
        b = backend(FakePcluster({"demo": described}), ec2)

        # moto's stock console text has no host key block: not printed yet
        assert b.status(creating_record())["status"] == "CREATING"

        monkeypatch.setattr(general, "SAMPLE_CONSOLE_OUTPUT", CONSOLE)
        record = b.status(creating_record())
        assert record["status"] == "READY" and record["head_node"]["host_key"] == ED25519


# ------------------------------------------------------------------------------------ delete
def test_delete_ours_starts_deleting():
    pc = FakePcluster({"demo": fixture("describe_create_complete.json")})
    record = backend(pc).delete(creating_record(status="FAILED", reason="x"))
    assert record["status"] == "DELETING" and "reason" not in record
    assert pc.called("delete_cluster") == [{"cluster_name": "demo", "region": "us-east-1"}]


def test_delete_of_a_cluster_already_deleting_does_not_ask_again():
    pc = FakePcluster({"demo": fixture("describe_delete_in_progress.json")})
    assert backend(pc).delete(creating_record())["status"] == "DELETING"
    assert not pc.called("delete_cluster")


def test_delete_not_found_is_deleted():
    pc = FakePcluster()
    assert backend(pc).delete(creating_record())["status"] == "DELETED"
    assert not pc.called("delete_cluster")


def test_delete_404_from_delete_itself_is_deleted():
    """In moto the lib raises 404 even after a successful delete (it re-describes)."""
    pc = FakePcluster({"demo": fixture("describe_create_complete.json")})
    pc.delete_error = not_found("demo")
    assert backend(pc).delete(creating_record())["status"] == "DELETED"


def test_delete_leaves_a_cluster_that_is_not_ours_alone():
    theirs = fixture("describe_create_complete.json")
    for tag in theirs["tags"]:
        if tag["key"] == EXECUTION_TAG:
            tag["value"] = OTHER_ARN
    pc = FakePcluster({"demo": theirs})
    record = backend(pc).delete(creating_record())
    assert record["status"] == "DELETED" and "not ours" in record["note"] and "left alone" in record["note"]
    assert not pc.called("delete_cluster")

    untagged = fixture("describe_create_complete.json")
    untagged["tags"] = untagged["tags"][:2]
    pc = FakePcluster({"demo": untagged})
    assert "left alone" in backend(pc).delete(creating_record())["note"]
    # a record that does not say which execution it belongs to proves nothing
    pc = FakePcluster({"demo": fixture("describe_create_complete.json")})
    assert "left alone" in backend(pc).delete({"name": "demo"})["note"]
    assert not pc.called("delete_cluster")


def test_delete_refused_is_delete_failed_and_api_trouble_raises():
    pc = FakePcluster({"demo": fixture("describe_create_complete.json")})
    pc.delete_error = errors.BadRequestException(
        "Cluster 'demo' belongs to an incompatible ParallelCluster major version.")
    record = backend(pc).delete(creating_record())
    assert record["status"] == "DELETE_FAILED" and "incompatible ParallelCluster major version" in record["reason"]

    pc.delete_error = errors.LimitExceededException("Rate exceeded")
    with pytest.raises(ClusterError, match="deleting cluster demo: Rate exceeded"):
        backend(pc).delete(creating_record())


def test_deletion_status_states():
    b = backend(FakePcluster({"demo": fixture("describe_delete_in_progress.json")}))
    assert b.deletion_status(creating_record(status="DELETING"))["status"] == "DELETING"

    b = backend(FakePcluster())
    assert b.deletion_status(creating_record(status="DELETING"))["status"] == "DELETED"

    b = backend(FakePcluster({"demo": fixture("describe_delete_failed.json")}))
    record = b.deletion_status(creating_record(status="DELETING"))
    assert record["status"] == "DELETE_FAILED"
    assert record["reason"] == ("cluster demo is DELETE_FAILED: ClusterDeletionFailure: Failed to delete the "
                                "cluster: the security group sg-0abc has a dependent object.")


def test_deletion_status_of_a_cluster_still_standing_asks_again():
    pc = FakePcluster({"demo": fixture("describe_create_complete.json")})
    assert backend(pc).deletion_status(creating_record(status="DELETING"))["status"] == "DELETING"
    assert len(pc.called("delete_cluster")) == 1


def test_full_cycle_create_poll_delete():
    pc = FakePcluster()
    b = backend(pc)
    record = b.create(CTX, KEY)
    assert b.status(record)["status"] == "CREATING"
    pc.clusters["demo"]["clusterStatus"] = pc.clusters["demo"]["cloudFormationStackStatus"] = "CREATE_COMPLETE"
    record = b.status(record)
    assert record["status"] == "READY"
    record = b.delete(record)
    assert record["status"] == "DELETING"
    del pc.clusters["demo"]
    assert b.deletion_status(record)["status"] == "DELETED"


# ------------------------------------------------------------------------------------ find
def test_find_clusters_pages_and_filters_by_execution_tag():
    clusters = {}
    for index in range(5):
        described = fixture("describe_create_complete.json")
        described["clusterName"] = f"c{index}"
        for tag in described["tags"]:
            if tag["key"] == EXECUTION_TAG:
                tag["value"] = ARN if index % 2 == 0 else OTHER_ARN
        clusters[f"c{index}"] = described
    clusters["c4"]["clusterStatus"] = "DELETE_IN_PROGRESS"
    pc = FakePcluster(clusters)
    pc.page_size = 2
    b = backend(pc)
    found = b.find_clusters(ARN)
    assert [(r["name"], r["status"]) for r in found] == [("c0", "READY"), ("c2", "READY"), ("c4", "DELETING")]
    assert all(r["execution_arn"] == ARN and r["backend"] == "parallelcluster" for r in found)
    assert [c.get("next_token") for c in pc.called("list_clusters")] == [None, "2", "4"]
    # the records are enough to delete with
    assert b.delete(found[0])["status"] == "DELETING"
    assert b.find_clusters("arn:aws:states:us-east-1:123456789012:execution:x:none") == []


def test_pcluster_is_imported_lazily_and_the_module_imports_without_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pcluster.lib", None)  # as where the layer is missing
    b = ParallelClusterBackend(settings(), ec2_client=FakeEc2(), cluster_config=USER_CONFIG)
    with pytest.raises(ClusterError, match="pcluster.lib.*cannot be imported.*Lambda layer"):
        b.create(CTX, KEY)


def test_constructor_requires_a_mapping():
    with pytest.raises(ClusterError, match="must be a mapping"):
        ParallelClusterBackend(settings(), pcluster=FakePcluster(), cluster_config="cluster.yaml")


# ------------------------------------------------------------------------------------ config check
def write(tmp_path, text, name="cluster.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def messages(problems):
    return [(p.line, p.key, p.message) for p in problems]


def test_example_passes_and_loads():
    assert check_parallelcluster_config(EXAMPLE) == []
    config = load_parallelcluster_config(EXAMPLE)
    assert config["Scheduling"]["Scheduler"] == "slurm" and "Ssh" not in config["HeadNode"]


def test_missing_head_node(tmp_path):
    text = EXAMPLE.read_text()
    start = text.index("HeadNode:")
    end = text.index("Scheduling:")
    path = write(tmp_path, text[:start] + text[end:])
    problems = check_parallelcluster_config(path)
    assert messages(problems) == [(None, "HeadNode", "Missing data for required field.")]
    assert str(problems[0]) == f"{path}: HeadNode: Missing data for required field."


def test_unknown_and_missing_keys_with_lines(tmp_path):
    path = write(tmp_path, EXAMPLE.read_text().replace("InstanceType: t3.medium", "InstanceTyp: t3.medium"))
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if "InstanceTyp:" in l)
    head = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if l.startswith("HeadNode:"))
    assert messages(check_parallelcluster_config(path)) == [
        (head, "HeadNode.InstanceType", "Missing data for required field."),
        (line, "HeadNode.InstanceTyp", "Unknown field."),
    ]


def test_nested_list_keys_are_named_with_indexes(tmp_path):
    path = write(tmp_path, EXAMPLE.read_text().replace("MaxCount: 4", "MaxCount: 4\n          Colour: blue"))
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if "Colour" in l)
    assert messages(check_parallelcluster_config(path)) == [
        (line, "Scheduling.SlurmQueues[0].ComputeResources[0].Colour", "Unknown field.")]


def test_sge_scheduler_is_refused_once_with_our_message(tmp_path):
    path = write(tmp_path, EXAMPLE.read_text().replace("Scheduler: slurm", "Scheduler: sge"))
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if "Scheduler: sge" in l)
    assert messages(check_parallelcluster_config(path)) == [
        (line, "Scheduling.Scheduler",
         "stepcluster runs ParallelCluster jobs through Slurm: Scheduler must be slurm, not 'sge'")]
    with pytest.raises(ConfigError, match="Scheduler must be slurm, not 'sge'"):
        load_parallelcluster_config(path)


def test_reserved_tag(tmp_path):
    path = write(tmp_path, EXAMPLE.read_text() + "Tags:\n  - Key: stepcluster:execution\n    Value: mine\n")
    problems = check_parallelcluster_config(path)
    assert [(p.key, p.message.split(":")[0]) for p in problems] == [
        ("Tags[0].Key", "the tag key stepcluster")]
    assert "reserved" in problems[0].message and problems[0].line == len(path.read_text().splitlines()) - 1


def test_bad_yaml(tmp_path):
    path = write(tmp_path, "Region: us-east-1\nImage: {Os: alinux2023\nHeadNode: x\n")
    (problem,) = check_parallelcluster_config(path)
    assert problem.message.startswith("not valid YAML: while parsing a flow mapping expected ',' or '}'")
    assert problem.line == 3
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_parallelcluster_config(path)


@pytest.mark.parametrize("text,expected", [
    ("", "the file is empty"),
    ("- Region: us-east-1\n", "a ParallelCluster configuration is a YAML mapping (Image, HeadNode, "
                              "Scheduling...), not a list"),
    ("just words\n", "a ParallelCluster configuration is a YAML mapping (Image, HeadNode, "
                     "Scheduling...), not a str"),
])
def test_not_a_mapping(tmp_path, text, expected):
    (problem,) = check_parallelcluster_config(write(tmp_path, text))
    assert problem.message.startswith(expected)


def test_duplicate_keys_are_reported_after_pcluster_has_read_yaml(tmp_path):
    """pcluster.utils.yaml_load makes every later yaml.safe_load raise on duplicate keys."""
    from pcluster.utils import yaml_load

    yaml_load("a: 1\n")
    path = write(tmp_path, EXAMPLE.read_text() + "Region: eu-west-1\n")
    assert messages(check_parallelcluster_config(path)) == [
        (len(path.read_text().splitlines()), "Region", "duplicate key: only the last one would count")]


def test_duplicate_keys_and_unreadable_files(tmp_path):
    path = write(tmp_path, EXAMPLE.read_text() + "Region: eu-west-1\n")
    problems = check_parallelcluster_config(path)
    assert messages(problems) == [(len(path.read_text().splitlines()), "Region",
                                   "duplicate key: only the last one would count")]

    (problem,) = check_parallelcluster_config(tmp_path / "nope.yaml")
    assert problem.message.startswith("cannot read the file")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("Region: caf\xe9\n".encode("latin-1"))
    assert check_parallelcluster_config(bad)[0].message == "not UTF-8 text (invalid byte at offset 11)"


def test_check_makes_no_aws_call_and_restores_the_environment(tmp_path, monkeypatch):
    """A capacity reservation makes pcluster's schema call EC2 while loading: the check sends it to
    a closed local port instead of AWS, and puts the caller's AWS_* variables back."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_PROFILE", "someone")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    before = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    addresses = []

    def no_network(self, address):
        addresses.append(address)
        raise ConnectionRefusedError(address)

    monkeypatch.setattr(socket.socket, "connect", no_network)
    path = write(tmp_path, EXAMPLE.read_text().replace(
        "      Networking:\n        SubnetIds:",
        "      CapacityReservationTarget:\n        CapacityReservationId: cr-0123456789abcdef0\n"
        "      Networking:\n        SubnetIds:"))
    assert check_parallelcluster_config(path) == []
    assert addresses and all(a[0] == "127.0.0.1" and a[1] == 9 for a in addresses)
    assert {k: v for k, v in os.environ.items() if k.startswith("AWS_")} == before


def test_check_without_pcluster_is_one_problem(monkeypatch):
    monkeypatch.setitem(sys.modules, "pcluster.schemas.cluster_schema", None)
    (problem,) = check_parallelcluster_config(EXAMPLE)
    assert "aws-parallelcluster package is not importable" in problem.message


def test_recursive_or_exploding_aliases_are_refused(tmp_path):
    (problem,) = check_parallelcluster_config(write(tmp_path, "Image: &x {Os: alinux2023, Self: *x}\n"))
    assert problem.message == "a YAML alias refers to a node that contains it (a recursive structure)"
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)]
    (problem,) = check_parallelcluster_config(write(tmp_path, "\n".join(rows) + "\n", "laughs.yaml"))
    assert problem.message.startswith("the YAML expands to more than 100000 values")


def test_the_configuration_sent_to_pcluster_passes_its_own_schema(tmp_path):
    """What create() hands pcluster.lib (the example plus our key and execution tag) is valid
    for pcluster's own schema, checked offline."""
    import yaml

    example = EXAMPLE
    settings = SimpleNamespace(region="us-east-1", cluster_poll_seconds=30, create_timeout_seconds=3600,
                               use_public_address=False, head_node_port=22)
    backend = ParallelClusterBackend(settings, pcluster=object(), cluster_config=load_parallelcluster_config(example))
    sent = backend.cluster_configuration(
        RunContext("exec-1", "arn:aws:states:us-east-1:123456789012:execution:sm:exec-1", "demo"),
        SshKey("stepcluster.stack.exec-1", "arn:secret", owned=True))
    assert sent["HeadNode"]["Ssh"]["KeyName"] == "stepcluster.stack.exec-1"
    path = tmp_path / "sent.yaml"
    path.write_text(yaml.safe_dump(sent))
    problems = check_parallelcluster_config(path)
    # The one problem is our own rule for user files (the execution tag is reserved for us);
    # pcluster's schema has nothing to say.
    assert len(problems) == 1 and "stepcluster:execution is reserved" in problems[0].message, problems


# ------------------------------------------------------------------------------------ IAM mode
ROLE = "arn:aws:iam::123456789012:role/parallelcluster/stepcluster-node"
PROFILE = "arn:aws:iam::123456789012:instance-profile/parallelcluster/stepcluster-node"


def example_config() -> dict:
    import yaml
    return yaml.safe_load(EXAMPLE.read_text())


def iam_problems(tmp_path, config: dict, mode="base"):
    """role_creation_problems of `config` written as YAML, with that file's lines."""
    import yaml

    from stepcluster.clusters.parallelcluster_config import _KeyLines, _parse, role_creation_problems

    path = write(tmp_path, yaml.safe_dump(config, sort_keys=False))
    parsed, root, problems = _parse(str(path))
    assert problems == []
    return path, role_creation_problems(str(path), parsed, _KeyLines(root), mode)


def line_of(path, text, start=1):
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if i >= start and text in line)


def pcluster_would_create_roles(config: dict) -> set[str]:
    """Where pcluster 3.16.1 creates IAM roles for this config, read from its own config model
    (ClusterSchema, offline) with the conditions its template builder uses."""
    from pcluster.schemas.cluster_schema import ClusterSchema

    from stepcluster.clusters.parallelcluster_config import _offline_aws_env

    with _offline_aws_env("us-east-1"):
        model = ClusterSchema(cluster_name="stepcluster-check").load(copy.deepcopy(config))
    places = set()
    # templates/cdk_builder_utils.py NodeIamResourcesBase._add_role_and_policies: a role (and its
    # policies and instance profile) unless the node names an instance profile or a role
    groups = [("HeadNode", model.head_node)]
    groups += [(f"Scheduling.SlurmQueues[{i}]", q) for i, q in enumerate(model.scheduling.queues)]
    pools = model.login_nodes.pools if model.login_nodes else []
    groups += [(f"LoginNodes.Pools[{i}]", p) for i, p in enumerate(pools)]
    places |= {f"{key}.Iam" for key, node in groups if not node.instance_profile and not node.instance_role}
    # templates/cluster_stack.py _condition_create_lambda_iam_role
    iam = model.iam
    if not iam or not iam.roles or not iam.roles.lambda_functions_role \
            or iam.roles.get_param("lambda_functions_role").implied:
        places.add("Iam.Roles.LambdaFunctionsRole")
    return places


def _unnamed(config, *keys):
    for key in keys:
        node = config
        for part in key[:-1]:
            node = node[part]
        node.pop(key[-1])
    return config


def _with(config, path, value):
    node = config
    for part in path[:-1]:
        node = node[part] if isinstance(node, list) else node.setdefault(part, {})
    node[path[-1]] = value
    return config


def _login(config, iam=None):
    pool = {"Name": "login", "InstanceType": "t3.medium", "Count": 1,
            "Networking": {"SubnetIds": ["subnet-0123456789abcdef0"]}}
    if iam:
        pool["Iam"] = iam
    config["LoginNodes"] = {"Pools": [pool]}
    return config


def _second_queue(config, iam=None):
    queue = copy.deepcopy(config["Scheduling"]["SlurmQueues"][0])
    queue["Name"] = "second"
    queue.pop("Iam", None)
    if iam:
        queue["Iam"] = iam
    config["Scheduling"]["SlurmQueues"].append(queue)
    return config


IAM_MATRIX = {
    "example": lambda c: c,
    "no roles at all": lambda c: _unnamed(c, ("HeadNode", "Iam"), ("Scheduling", "SlurmQueues", 0, "Iam"), ("Iam",)),
    "head node profile": lambda c: _with(c, ["HeadNode", "Iam"], {"InstanceProfile": PROFILE}),
    "head node policies only": lambda c: _with(c, ["HeadNode", "Iam"], {"AdditionalIamPolicies": [
        {"Policy": "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"}]}),
    "a second queue without a role": _second_queue,
    "a second queue with a profile": lambda c: _second_queue(c, {"InstanceProfile": PROFILE}),
    "a login pool without a role": _login,
    "a login pool with a role": lambda c: _login(c, {"InstanceRole": ROLE}),
    "empty lambda role": lambda c: _with(c, ["Iam", "Roles", "LambdaFunctionsRole"], ""),
    "no Iam.Roles": lambda c: _with(c, ["Iam"], {"ResourcePrefix": "/parallelcluster/team-"}),
}


@pytest.mark.parametrize("case", IAM_MATRIX)
def test_role_creation_found_where_pclusters_own_model_says(tmp_path, case):
    config = IAM_MATRIX[case](example_config())
    _, problems = iam_problems(tmp_path, config)
    flagged = {p.key for p in problems if p.severity == "error" and "pcluster would create" in p.message}
    assert flagged == pcluster_would_create_roles(config)
    assert (flagged == set()) == (case in ("example", "head node profile", "a second queue with a profile",
                                           "a login pool with a role"))


def test_each_place_is_named_with_its_line_and_the_fix(tmp_path):
    config = _login(_second_queue(_unnamed(example_config(), ("HeadNode", "Iam"), ("Iam",))))
    path, problems = iam_problems(tmp_path, config)
    second = line_of(path, "- Name: second")
    assert [(p.line, p.key) for p in problems] == [
        (line_of(path, "HeadNode:"), "HeadNode.Iam"),
        (second, "Scheduling.SlurmQueues[1].Iam"),
        (line_of(path, "- Name: login"), "LoginNodes.Pools[0].Iam"),
        (None, "Iam.Roles.LambdaFunctionsRole")]
    for problem in problems:
        assert problem.message.endswith(
            "or deploy with ParallelClusterIamMode=privileged (stepcluster preprocess --parallelcluster-iam privileged)")
    assert "queue 'second'" in problems[1].message and "login nodes pool 'login'" in problems[2].message
    assert "Scheduling.SlurmQueues[1].Iam.InstanceRole: arn:aws:iam::ACCOUNT:role/parallelcluster/NAME" \
        in problems[1].message
    assert "LambdaFunctionsRole: arn:aws:iam::ACCOUNT:role/parallelcluster/NAME" in problems[3].message
    # in the privileged mode pcluster may create them all
    assert iam_problems(tmp_path, config, "privileged")[1] == []


def test_policies_of_a_role_pcluster_would_create_go_on_the_users_role(tmp_path):
    config = IAM_MATRIX["head node policies only"](example_config())
    _, (problem,) = iam_problems(tmp_path, config)
    assert problem.key == "HeadNode.Iam" and "put its AdditionalIamPolicies on that role instead" in problem.message


@pytest.mark.parametrize("mode", ["base", "privileged"])
def test_named_roles_must_be_under_the_path_the_deployment_may_pass(tmp_path, mode):
    config = _with(example_config(), ["HeadNode", "Iam", "InstanceRole"], "arn:aws:iam::123456789012:role/HeadNode")
    config["Iam"]["Roles"]["LambdaFunctionsRole"] = "arn:aws:iam::123456789012:role/other/lambda"
    path, problems = iam_problems(tmp_path, config, mode)
    assert [(p.line, p.key) for p in problems] == [
        (line_of(path, "InstanceRole: arn:aws:iam::123456789012:role/HeadNode"), "HeadNode.Iam.InstanceRole"),
        (line_of(path, "LambdaFunctionsRole:"), "Iam.Roles.LambdaFunctionsRole")]
    assert all("iam:PassRole on role/parallelcluster/*" in p.message for p in problems)


@pytest.mark.parametrize("prefix, refused", [("/team/", True), ("/team/x-", True), ("team-", False),
                                             ("/parallelcluster/team/", False)])
def test_a_resource_prefix_path_takes_the_instance_profiles_out_of_reach(tmp_path, prefix, refused):
    """A named InstanceRole still gets an instance profile from pcluster, under
    ResourcePrefix's path: the base mode may create instance profiles under /parallelcluster/."""
    config = _with(example_config(), ["Iam", "ResourcePrefix"], prefix)
    path, problems = iam_problems(tmp_path, config)
    assert [(p.line, p.key) for p in problems] == ([(line_of(path, "ResourcePrefix"), "Iam.ResourcePrefix")]
                                                   if refused else [])
    # instance profiles named everywhere: pcluster creates none, the prefix does not matter
    for parts in (["HeadNode"], ["Scheduling", "SlurmQueues", 0]):
        _with(config, parts + ["Iam"], {"InstanceProfile": PROFILE})
    assert iam_problems(tmp_path, config)[1] == []


def test_a_permissions_boundary_in_base_mode_is_a_warning(tmp_path):
    config = _with(example_config(), ["Iam", "PermissionsBoundary"], "arn:aws:iam::123456789012:policy/b")
    _, (problem,) = iam_problems(tmp_path, config)
    assert problem.severity == "warning" and problem.key == "Iam.PermissionsBoundary"
    assert iam_problems(tmp_path, config, "privileged")[1] == []


def test_the_example_passes_in_both_modes_and_its_roles_are_placeholders():
    assert check_parallelcluster_config(EXAMPLE, "base") == []
    assert check_parallelcluster_config(EXAMPLE, "privileged") == []
    text = EXAMPLE.read_text()
    assert text.count("arn:aws:iam::123456789012:role/parallelcluster/") == 3


# ------------------------------------------------------------------------------------ versions
def lib_imported_here(monkeypatch, version, pc):
    """A backend that imports "pcluster.lib" itself (here: `pc`), reporting `version`."""
    import pcluster

    from stepcluster.clusters import parallelcluster as module

    monkeypatch.setitem(sys.modules, "pcluster.lib", pc)
    monkeypatch.setattr(pcluster, "lib", pc, raising=False)
    monkeypatch.setattr(module, "_installed_version", lambda: version)
    return ParallelClusterBackend(settings(), pcluster=None, ec2_client=FakeEc2(),
                                  cluster_config=copy.deepcopy(USER_CONFIG))


def test_create_refuses_a_pcluster_version_not_listed_and_creates_nothing(monkeypatch):
    pc = FakePcluster()
    b = lib_imported_here(monkeypatch, "3.10.1", pc)  # e.g. a layer given by ParallelClusterLayerArn
    with pytest.raises(ClusterError, match=r"aws-parallelcluster 3\.10\.1.*3\.16\.1.*ParallelClusterVersion"):
        b.create(CTX, KEY)
    assert pc.called("create_cluster") == []


def test_teardown_works_whatever_the_pcluster_version(monkeypatch):
    pc = FakePcluster()
    pc.clusters["demo"] = fixture("describe_create_in_progress.json") | {
        "clusterName": "demo", "tags": [{"key": EXECUTION_TAG, "value": ARN}]}
    b = lib_imported_here(monkeypatch, "3.99.0", pc)
    assert b.delete(creating_record())["status"] == "DELETING"
    assert b.find_clusters(ARN)[0]["name"] == "demo"


@pytest.mark.parametrize("version", ["3.11.1", "3.16.1"])
def test_create_accepts_the_listed_versions(monkeypatch, version):
    pc = FakePcluster()
    assert lib_imported_here(monkeypatch, version, pc).create(CTX, KEY)["status"] == "CREATING"
    assert len(pc.called("create_cluster")) == 1


def test_the_installed_pcluster_is_a_listed_version():
    from stepcluster.clusters.parallelcluster import PARALLELCLUSTER_VERSIONS, _installed_version

    assert _installed_version() in PARALLELCLUSTER_VERSIONS
