"""The cfncluster backend: cfncluster 1.6.1's real code against moto, and its config checker."""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from stepcluster.clusters import cfncluster as backend_module
from stepcluster.clusters.base import EXECUTION_TAG, HeadNode, RunContext, SshKey
from stepcluster.clusters.cfncluster import CfnClusterBackend
from stepcluster.clusters.cfncluster_config import (check_cfncluster_config, cfncluster_region,
                                                    cfncluster_scheduler, config_for_run,
                                                    read_cfncluster_config)
from stepcluster.errors import ClusterError, ConfigError, InputError
from stepcluster.local.cfncluster_standin import (STANDIN_TEMPLATE, fail_stack, install_standin,
                                                  write_local_cfncluster_config)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cfncluster"
REGION = "us-east-1"
EXEC_A = "arn:aws:states:us-east-1:123456789012:execution:stepcluster:run-a"
EXEC_B = "arn:aws:states:us-east-1:123456789012:execution:stepcluster:run-b"
KEY = SshKey(key_name="stepcluster-run-a", secret_arn="arn:aws:secretsmanager:x", owned=True)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedFromSettings"


def settings(**overrides):
    values = dict(region=REGION, cluster_poll_seconds=20, create_timeout_seconds=3600,
                  use_public_address=False, head_node_port=2222, head_node_host_key=HOST_KEY)
    values.update(overrides)
    return types.SimpleNamespace(**values)


def ctx(execution_arn=EXEC_A, name="demo"):
    return RunContext(execution=execution_arn.rsplit(":", 1)[1], execution_arn=execution_arn,
                      cluster_name=name)


def live_stacks(cfn):
    return [s for s in cfn.describe_stacks()["Stacks"] if s["StackStatus"] != "DELETE_COMPLETE"]


def moto_stack(stack_id):
    from moto.cloudformation import cloudformation_backends
    from moto.core import DEFAULT_ACCOUNT_ID

    return next(s for s in cloudformation_backends[DEFAULT_ACCOUNT_ID][REGION].stacks.values()
                if s.stack_id == stack_id)


@pytest.fixture
def aws(tmp_path, monkeypatch):
    """moto with the stand-in template and network; afterwards, no stack may be left."""
    calls = []
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")   # faster; the stand-in needs none
    # update_check must never reach PyPI: any URL fetch by cfncluster fails the test.
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: calls.append(a) or 1 / 0)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        ec2 = boto3.client("ec2", region_name=REGION)
        cfn = boto3.client("cloudformation", region_name=REGION)
        standin = install_standin(s3, ec2, bucket="stepcluster-templates")
        env = types.SimpleNamespace(s3=s3, ec2=ec2, cfn=cfn, standin=standin, tmp=tmp_path,
                                    urlopen_calls=calls)
        yield env
        assert live_stacks(cfn) == [], "a test leaked stacks"
    assert calls == [], "cfncluster fetched a URL"
    assert list((tmp_path / "tmp").iterdir()) == [], "temporary cfncluster configs left behind"


def user_config(env, **replace) -> Path:
    text = (FIXTURES / "user.config.in").read_text()
    values = {"@REGION@": REGION, "@TEMPLATE_URL@": env.standin["template_url"],
              "@VPC_ID@": env.standin["vpc_id"], "@SUBNET_ID@": env.standin["subnet_id"],
              **replace}
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    path = env.tmp / "user.config"
    path.write_text(text)
    return path


def make_backend(env, config=None, clock=None, **overrides):
    kwargs = {"clock": clock} if clock else {}
    return CfnClusterBackend(settings(**overrides), config_path=str(config or user_config(env)),
                             cfn_client=env.cfn, ec2_client=env.ec2, **kwargs)


# --------------------------------------------------------------------------------------------
# create


def test_create_runs_cfncluster_with_our_tag_key_and_scheduler(aws):
    config = user_config(aws)
    before = hashlib.sha256(config.read_bytes()).hexdigest()
    backend = make_backend(aws, config)

    record = backend.create(ctx(), KEY)

    assert record["backend"] == "cfncluster" and record["status"] == "CREATING"
    assert record["name"] == "demo" and record["stack_name"] == "cfncluster-demo"
    assert record["poll_seconds"] == 20 and record["create_timeout_seconds"] == 3600
    assert isinstance(record["created_at"], int) and record["execution_arn"] == EXEC_A
    stack = aws.cfn.describe_stacks(StackName="cfncluster-demo")["Stacks"][0]
    assert stack["StackId"] == record["stack_id"]
    tags = {t["Key"]: t["Value"] for t in stack["Tags"]}
    assert tags[EXECUTION_TAG] == EXEC_A and tags["project"] == "demo"   # config's tags kept
    params = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert params["Scheduler"] == "slurm"
    assert params["KeyName"] == "stepcluster-run-a"                   # the run's key, not the user's
    assert params["CLITemplate"] == "default"
    assert hashlib.sha256(config.read_bytes()).hexdigest() == before   # user's file untouched
    backend.delete(record)


def test_create_uses_the_config_key_when_the_run_has_none(aws):
    backend = make_backend(aws)
    record = backend.create(ctx(), SshKey(key_name=None, secret_arn="s", owned=False))
    params = {p["ParameterKey"]: p["ParameterValue"]
              for p in aws.cfn.describe_stacks(StackName="cfncluster-demo")["Stacks"][0]["Parameters"]}
    assert params["KeyName"] == "users-own-key"
    backend.delete(record)


def test_create_again_adopts_our_stack(aws):
    backend = make_backend(aws)
    first = backend.create(ctx(), KEY)
    again = backend.create(ctx(), KEY)
    assert again["stack_id"] == first["stack_id"] and again["status"] == "CREATING"
    assert len(live_stacks(aws.cfn)) == 1
    backend.delete(first)


@pytest.mark.parametrize("tags, whose", [([], "something other than a stepcluster run"),
                                         ([{"Key": EXECUTION_TAG, "Value": EXEC_B}], EXEC_B)])
def test_name_in_use_by_another_stack(aws, tags, whose):
    aws.cfn.create_stack(StackName="cfncluster-demo", TemplateURL=aws.standin["template_url"],
                         Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in (
                             ("KeyName", "k"), ("VPCId", aws.standin["vpc_id"]),
                             ("MasterSubnetId", aws.standin["subnet_id"]),
                             ("AvailabilityZone", "us-east-1a"))], Tags=tags)
    with pytest.raises(InputError, match="in use") as info:
        make_backend(aws).create(ctx(), KEY)
    assert whose in str(info.value)
    assert len(live_stacks(aws.cfn)) == 1                              # theirs, untouched
    aws.cfn.delete_stack(StackName="cfncluster-demo")


def test_create_error_carries_cfncluster_message(aws):
    backend = make_backend(aws, user_config(aws, **{"@SUBNET_ID@": "subnet-0123456789abcdef0"}))
    with pytest.raises(ClusterError, match="subnet-0123456789abcdef0.*does not exist"):
        backend.create(ctx(), KEY)


def test_create_refuses_a_bad_config_before_calling_cfncluster(aws):
    config = aws.tmp / "creds.config"
    config.write_text(user_config(aws).read_text().replace(
        "[aws]\n", "[aws]\naws_secret_access_key = abc\n"))
    with pytest.raises(ConfigError, match="IAM role"):
        make_backend(aws, config).create(ctx(), KEY)
    with pytest.raises(ConfigError, match="eu-west-1.*us-east-1"):
        make_backend(aws, user_config(aws, **{"@REGION@": "eu-west-1"})).create(ctx(), KEY)
    no_key = aws.tmp / "nokey.config"
    no_key.write_text(user_config(aws).read_text().replace("key_name = users-own-key\n", ""))
    with pytest.raises(ConfigError, match="key_name"):
        make_backend(aws, no_key).create(ctx(), SshKey(None, "s", False))


@pytest.mark.parametrize("name", ["9lives", "a" * 61, "has_underscore", "", None, "semi;colon",
                                  "demo\n"])
def test_check_name_refuses(name):
    with pytest.raises(InputError):
        CfnClusterBackend(settings(), config_path="unused").check_name(name)


def test_check_name_accepts_the_longest():
    name = "a" + "-9" * 29 + "b"
    assert len(name) == 60
    backend = CfnClusterBackend(settings(), config_path="unused")
    assert backend.check_name(name) == name


# --------------------------------------------------------------------------------------------
# status


def test_status_ready_with_head_node_from_outputs_and_settings_host_key(aws):
    backend = make_backend(aws)
    record = backend.status(backend.create(ctx(), KEY))
    assert record["status"] == "READY"
    assert record["head_node"] == {"host": "127.0.0.1", "port": 2222, "user": "hpc",
                                   "scheduler": "slurm", "host_key": HOST_KEY}
    assert record["host_key_source"] == "settings"
    assert backend.head_node(record) == HeadNode("127.0.0.1", 2222, "hpc", "slurm", HOST_KEY)
    backend.delete(record)


def test_status_reads_the_host_key_from_the_console_output(aws, monkeypatch):
    import moto.ec2.responses.general as general

    console = ("cloud-init: boot\n-----BEGIN SSH HOST KEY KEYS-----\n"
               "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQConsole root@ip-10-0-0-5\n"
               "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIConsoleKey root@ip-10-0-0-5\n"
               "-----END SSH HOST KEY KEYS-----\n")
    monkeypatch.setattr(general, "SAMPLE_CONSOLE_OUTPUT", console)
    backend = make_backend(aws, head_node_host_key=None)
    record = backend.status(backend.create(ctx(), KEY))
    assert record["status"] == "READY" and record["host_key_source"] == "console"
    assert record["head_node"]["host_key"] == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIConsoleKey"
    backend.delete(record)


def test_status_waits_for_the_host_key_until_the_timeout(aws):
    now = [0.0]
    backend = make_backend(aws, head_node_host_key=None, clock=lambda: now[0])
    created = backend.create(ctx(), KEY)
    now[0] = created["created_at"] + 60
    record = backend.status(created)
    assert record["status"] == "CREATING" and "host key" in record["waiting_for"]
    with pytest.raises(ClusterError):
        backend.head_node(record)
    now[0] = created["created_at"] + 3601
    record = backend.status(record)
    assert record["status"] == "FAILED"
    assert "not ready after 60 minutes" in record["reason"] and "host key" in record["reason"]
    backend.delete(record)


def test_status_times_out_while_the_stack_is_in_progress(aws):
    now = [0.0]
    backend = make_backend(aws, clock=lambda: now[0], create_timeout_seconds=1800)
    created = backend.create(ctx(), KEY)
    moto_stack(created["stack_id"]).status = "CREATE_IN_PROGRESS"
    now[0] = created["created_at"] + 10
    assert backend.status(created)["status"] == "CREATING"
    now[0] = created["created_at"] + 1801
    record = backend.status(created)
    assert record["status"] == "FAILED" and "not ready after 30 minutes" in record["reason"]
    moto_stack(created["stack_id"]).status = "CREATE_COMPLETE"
    backend.delete(record)


def test_status_public_address(aws):
    backend = make_backend(aws, use_public_address=True)
    record = backend.status(backend.create(ctx(), KEY))
    assert record["status"] == "READY" and record["head_node"]["host"] == "127.0.0.1"
    backend.delete(record)

    private = aws.tmp / "private.config"
    private.write_text(user_config(aws).read_text() + "use_public_ips = false\n")
    backend = make_backend(aws, private, use_public_address=True)
    record = backend.status(backend.create(ctx(name="private"), KEY))
    assert record["status"] == "FAILED" and "MasterPublicIP" in record["reason"]
    backend.delete(record)


def test_failed_create_reports_the_stack_event_reason(aws):
    reason = "Failed to receive 1 resource signal(s) within the specified duration"
    failing = install_standin(aws.s3, aws.ec2, bucket="stepcluster-templates", fail_reason=reason)
    config = write_local_cfncluster_config(aws.tmp / "fail.config", failing)
    backend = make_backend(aws, config)
    record = backend.status(backend.create(ctx(), KEY))
    assert record["status"] == "FAILED"
    assert record["reason"] == f"ROLLBACK_COMPLETE: MasterServer: {reason}"
    deleted = backend.delete(record)
    assert deleted["status"] == "DELETED"


def test_fail_stack_helper_and_a_vanished_stack(aws):
    backend = make_backend(aws)
    record = backend.create(ctx(), KEY)
    fail_stack(aws.cfn, "cfncluster-demo", "Instance i-1 failed to stabilize")
    assert backend.status(record)["reason"] == \
        "ROLLBACK_COMPLETE: MasterServer: Instance i-1 failed to stabilize"
    aws.cfn.delete_stack(StackName="cfncluster-demo")
    for ref in (record, {k: v for k, v in record.items() if k != "stack_id"}):
        gone = backend.status(ref)
        assert gone["status"] == "FAILED" and "disappeared" in gone["reason"]


# --------------------------------------------------------------------------------------------
# delete


def test_delete_ours(aws):
    backend = make_backend(aws)
    record = backend.status(backend.create(ctx(), KEY))
    deleted = backend.delete(record)
    assert deleted["status"] in ("DELETING", "DELETED")
    assert backend.deletion_status(deleted)["status"] == "DELETED"
    assert live_stacks(aws.cfn) == []
    assert backend.delete(deleted)["status"] == "DELETED"               # again: already gone
    instances = aws.ec2.describe_instances()["Reservations"]
    assert all(i["State"]["Name"] == "terminated" for r in instances for i in r["Instances"])


def test_deletion_status_in_progress_and_failed(aws):
    from moto.cloudformation.models import Event

    backend = make_backend(aws)
    record = backend.create(ctx(), KEY)
    stack = moto_stack(record["stack_id"])
    stack.status = "DELETE_IN_PROGRESS"
    assert backend.deletion_status(record)["status"] == "DELETING"
    assert backend.delete(record)["status"] == "DELETING"              # not asked twice
    stack.events.append(Event(stack.stack_id, stack.name, "MasterServer", "i-1",
                              "AWS::EC2::Instance", "DELETE_FAILED",
                              "Instance is protected from termination", None))
    stack.status = "DELETE_FAILED"
    failed = backend.deletion_status(record)
    assert failed["status"] == "DELETE_FAILED"
    assert failed["reason"] == "MasterServer: Instance is protected from termination"
    # a retried delete goes through cfncluster again
    assert backend.delete(failed)["status"] in ("DELETING", "DELETED")
    assert live_stacks(aws.cfn) == []


def test_deletion_status_starts_a_delete_that_never_started(aws):
    backend = make_backend(aws)
    record = backend.create(ctx(), KEY)
    assert backend.deletion_status(record)["status"] in ("DELETING", "DELETED")
    assert live_stacks(aws.cfn) == []


def test_delete_leaves_other_stacks_alone(aws):
    other = make_backend(aws).create(ctx(EXEC_B, "theirs"), KEY)
    ours_by_name = {"backend": "cfncluster", "name": "theirs", "stack_name": "cfncluster-theirs",
                    "execution_arn": EXEC_A, "status": "READY"}
    result = make_backend(aws).delete(ours_by_name)
    assert result["status"] == "DELETED" and "left alone" in result["note"]
    no_execution = {k: v for k, v in other.items() if k != "execution_arn"}
    assert "left alone" in make_backend(aws).delete(no_execution)["note"]
    assert [s["StackName"] for s in live_stacks(aws.cfn)] == ["cfncluster-theirs"]
    make_backend(aws).delete(other)


def test_find_clusters_by_execution(aws):
    backend = make_backend(aws)
    a1 = backend.create(ctx(EXEC_A, "a-one"), KEY)
    a2 = backend.create(ctx(EXEC_A, "a-two"), KEY)
    b1 = backend.create(ctx(EXEC_B, "b-one"), KEY)
    found = backend.find_clusters(EXEC_A)
    assert sorted(r["name"] for r in found) == ["a-one", "a-two"]
    assert {r["stack_id"] for r in found} == {a1["stack_id"], a2["stack_id"]}
    for record in found:
        assert backend.delete(record)["status"] in ("DELETING", "DELETED")
    assert backend.find_clusters(EXEC_A) == []
    assert [r["name"] for r in backend.find_clusters(EXEC_B)] == ["b-one"]
    backend.delete(b1)


def test_pkg_resources_shim_when_setuptools_has_none(monkeypatch):
    monkeypatch.delitem(sys.modules, "pkg_resources", raising=False)   # as with setuptools >= 82
    monkeypatch.setattr("builtins.__import__", _refusing_import(__import__, "pkg_resources"))
    backend_module._ensure_pkg_resources()
    shim = sys.modules["pkg_resources"]
    assert shim.get_distribution("cfncluster").version == "1.6.1"


def _refusing_import(real_import, refused):
    def fake(name, *args, **kwargs):
        if name == refused and name not in sys.modules:
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)
    return fake


def test_standin_template_declares_what_cfncluster_reads():
    import json

    template = json.loads(STANDIN_TEMPLATE)
    assert {"KeyName", "VPCId", "MasterSubnetId", "AvailabilityZone", "Scheduler", "BaseOS",
            "ScaleDownIdleTime", "EBSVolumeId"} <= set(template["Parameters"])
    assert set(template["Outputs"]) == {"MasterPrivateIP", "MasterPublicIP", "ClusterUser"}
    assert template["Outputs"]["ClusterUser"]["Value"] == "hpc"
    assert template["Resources"]["MasterServer"]["Type"] == "AWS::EC2::Instance"


# --------------------------------------------------------------------------------------------
# the config checker


def errors(problems):
    return [p for p in problems if p.severity == "error"]


def test_check_good_config():
    assert check_cfncluster_config(FIXTURES / "good.config") == []
    assert cfncluster_scheduler(FIXTURES / "good.config") == "slurm"
    assert cfncluster_region(FIXTURES / "good.config") == "us-east-1"


def test_check_local_config(tmp_path):
    standin = {"region": REGION, "template_url": "https://b.s3.amazonaws.com/t.json",
               "vpc_id": "vpc-0123456789abcdef0", "subnet_id": "subnet-0123456789abcdef0",
               "scheduler": "sge"}
    path = write_local_cfncluster_config(tmp_path / "local.config", standin)
    assert check_cfncluster_config(path) == []
    assert cfncluster_scheduler(path) == "sge"


def test_check_credentials_are_errors_that_say_why():
    problems = errors(check_cfncluster_config(FIXTURES / "credentials.config"))
    by_line = {p.line: p for p in problems}
    assert set(by_line) == {7, 8, 9}
    assert by_line[7].key == "aws_access_key_id" and by_line[7].section == "aws"
    assert by_line[8].key == "aws_secret_access_key"
    assert by_line[9].key == "aws_session_token" and "commented out" in by_line[9].message
    for problem in problems:
        assert "never" in problem.message and "package" in problem.message
        assert "IAM role" in problem.message
    with pytest.raises(ConfigError):
        cfncluster_scheduler(FIXTURES / "credentials.config")


def test_check_example_placeholders_are_not_credentials(tmp_path):
    path = tmp_path / "c.config"
    path.write_text((FIXTURES / "good.config").read_text().replace(
        "[aws]\n", "[aws]\n#aws_access_key_id = #your_aws_access_key_id\n"))
    assert check_cfncluster_config(path) == []


def test_check_missing_sections():
    problems = check_cfncluster_config(FIXTURES / "missing_sections.config")
    found = {(p.section, p.key, p.line) for p in errors(problems)}
    assert ("aws", None, None) in found
    assert ("cluster default", "vpc_settings", 4) in found


def test_check_missing_vpc_keys_and_sections():
    problems = errors(check_cfncluster_config(FIXTURES / "missing_vpc_keys.config"))
    found = {(p.section, p.key, p.line): p.message for p in problems}
    assert ("vpc private", "master_subnet_id", 10) in found
    assert "names [ebs data], which is not in the file" in found[("cluster compute", "ebs_settings", 8)]
    # another cluster template, given by the caller
    problems = errors(check_cfncluster_config(FIXTURES / "missing_vpc_keys.config",
                                              cluster_template="nope"))
    assert any("[cluster nope]" in p.message for p in problems)


def test_check_bad_scheduler():
    (problem,) = errors(check_cfncluster_config(FIXTURES / "bad_scheduler.config"))
    assert (problem.line, problem.section, problem.key) == (7, "cluster default", "scheduler")
    assert "sge, slurm, torque" in problem.message and "'pbs'" in problem.message
    assert str(problem).startswith(f"{FIXTURES / 'bad_scheduler.config'}:7:")


def test_check_broken_file_never_raises(tmp_path):
    problems = errors(check_cfncluster_config(FIXTURES / "broken.config"))
    lines = {p.line for p in problems}
    # before a section, duplicate key, bad boolean, lone %, no `=`, bad vpc id, empty value,
    # duplicate section
    assert {1, 4, 5, 9, 10, 12, 13, 14} <= lines
    for path, data in (("nul.config", b"[global]\x00"), ("latin.config", b"[global]\n\xe9=1\n")):
        (tmp_path / path).write_bytes(data)
        (problem,) = check_cfncluster_config(tmp_path / path)
        assert problem.severity == "error"
    (problem,) = check_cfncluster_config(tmp_path / "absent.config")
    assert "not found" in problem.message
    assert cfncluster_region(tmp_path / "absent.config") is None


def test_config_for_run_changes_only_two_lines(tmp_path):
    source = (FIXTURES / "user.config.in").read_text()
    path = tmp_path / "u.config"
    path.write_text(source)
    ini, _ = read_cfncluster_config(path)
    out = config_for_run(ini, key_name="run-key%1")
    changed = [(a, b) for a, b in zip(source.splitlines(), out.splitlines()) if a != b]
    assert changed == [("update_check = true", "update_check = false"),
                       ("key_name = users-own-key", "key_name = run-key%%1")]
    assert len(out.splitlines()) == len(source.splitlines())
    # no [global] update_check and no key_name: lines are added, nothing else moves
    bare = source.replace("update_check = true\n", "").replace("key_name = users-own-key\n", "")
    path.write_text(bare)
    ini, _ = read_cfncluster_config(path)
    out = config_for_run(ini, key_name="k")
    assert "[global]\nupdate_check = false\n" in out
    assert "[cluster default]\nkey_name = k\n" in out
    assert "[cluster other]\nkey_name = not-this-one\n" in out
