"""Per-run SSH keys (EC2 key pair + Secrets Manager secret, in moto) and host-key discovery."""

import boto3
import paramiko
import pytest
from moto import mock_aws

from stepcluster.clusters.base import RunContext
from stepcluster.clusters.hostkeys import host_key_from_console
from stepcluster.errors import ClusterError
from stepcluster.keys import RunKeys, new_key_pair
from stepcluster.remote.ssh import load_private_key

ARN = "arn:aws:states:us-east-1:123456789012:execution:sm:run-1"
CTX = RunContext("run-1", ARN, "c1")


@pytest.fixture
def aws(monkeypatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    with mock_aws():
        yield boto3.client("ec2"), boto3.client("secretsmanager")


def counts(ec2, sm):
    return len(ec2.describe_key_pairs()["KeyPairs"]), len(sm.list_secrets()["SecretList"])


def test_a_generated_key_is_usable_by_paramiko():
    private, public = new_key_pair()
    key = load_private_key(private)
    assert public.startswith("ssh-ed25519 ") and public.split()[1] == key.get_base64()
    assert isinstance(key, paramiko.Ed25519Key)


def test_create_is_tagged_idempotent_and_delete_leaves_nothing(aws):
    ec2, sm = aws
    keys = RunKeys(prefix="stepcluster/stack-a")
    key = keys.create(CTX)
    assert key.owned and key.key_name == "stepcluster.stack-a.run-1"
    tags = sm.describe_secret(SecretId=key.secret_arn)["Tags"]
    assert {"Key": "stepcluster:execution", "Value": ARN} in tags
    assert load_private_key(sm.get_secret_value(SecretId=key.secret_arn)["SecretString"])
    assert keys.create(CTX) == key                # a retried create finds the same key
    assert counts(ec2, sm) == (1, 1)
    keys.delete("run-1")
    keys.delete("run-1")                          # already gone is fine
    assert counts(ec2, sm) == (0, 0)


def test_a_secret_of_another_execution_is_never_taken_over(aws):
    ec2, sm = aws
    sm.create_secret(Name="stepcluster/stack-a/run-1", SecretString="not ours",
                     Tags=[{"Key": "stepcluster:execution", "Value": "someone else"}])
    with pytest.raises(ClusterError, match="not this execution"):
        RunKeys(prefix="stepcluster/stack-a").create(CTX)
    assert sm.get_secret_value(SecretId="stepcluster/stack-a/run-1")["SecretString"] == "not ours"


def test_tagged_executions_are_this_stacks_run_keys_of_this_state_machine(aws):
    """What the periodic sweep finds: key pairs and secrets named after this stack, tagged with
    an execution whose ARN starts with the state machine's execution prefix."""
    ec2, sm = aws
    machine = "arn:aws:states:us-east-1:123456789012:execution:sm:"
    RunKeys(prefix="stepcluster/stack-a").create(CTX)                        # ours: both
    RunKeys(prefix="stepcluster/stack-a").create(RunContext("run-2", "arn:aws:states:us-east-1:"
                                                            "123456789012:execution:sm-b:run-2", "c2"))
    RunKeys(prefix="stepcluster/stack-a-b").create(RunContext("run-3", machine + "run-3", "c3"))
    lone_secret = RunKeys(prefix="stepcluster/stack-a").create(RunContext("run-4", machine + "run-4", "c4"))
    ec2.delete_key_pair(KeyName=lone_secret.key_name)
    lone_pair = RunKeys(prefix="stepcluster/stack-a").create(RunContext("run-5", machine + "run-5", "c5"))
    sm.delete_secret(SecretId=lone_pair.secret_arn, ForceDeleteWithoutRecovery=True)
    found = RunKeys(prefix="stepcluster/stack-a").tagged_executions(machine)
    # not run-2 (another state machine, "sm-b"), not run-3 (another stack, "stack-a-b")
    assert found == {ARN, machine + "run-4", machine + "run-5"}
    assert RunKeys(prefix="stepcluster/stack-c").tagged_executions(machine) == set()


CONSOLE = """[   10.1] cloud-init: ...
-----BEGIN SSH HOST KEY FINGERPRINTS-----
ec2: 256 SHA256:abc root@ip-10-0-0-1 (ECDSA)
-----END SSH HOST KEY FINGERPRINTS-----
-----BEGIN SSH HOST KEY KEYS-----
ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAA= root@ip-10-0-0-1
ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKey root@ip-10-0-0-1
ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== root@ip-10-0-0-1
-----END SSH HOST KEY KEYS-----
"""


def test_the_strongest_host_key_printed_by_cloud_init_is_pinned():
    assert host_key_from_console(CONSOLE) == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKey"
    assert host_key_from_console(CONSOLE.replace("ssh-ed25519", "x-none")).startswith("ecdsa-sha2-nistp256 ")
    assert host_key_from_console("booting...\nno keys yet") is None
