"""An abort or timeout at any moment, Create Cluster included, leaves nothing behind.

cfncluster's real code creates and deletes the stacks in moto (the stand-in template, as in
tests/unit/test_cfncluster.py); the execution is a real moto Step Functions execution, stopped
by the test at the moment each case needs; the EventBridge cleanup and the periodic sweep are
played to the cluster function's handler with the recorded events (events/cluster_cleanup.json,
events/cluster_sweep.json: moto delivers no execution events and runs no schedules).

Counted after each case: live stacks, run key pairs and run secrets.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws

from stepcluster import runtime
from stepcluster.clusters.base import EXECUTION_TAG, RunContext
from stepcluster.clusters.cfncluster import CfnClusterBackend
from stepcluster.config import parse_jobs_config
from stepcluster.errors import ClusterError
from stepcluster.executions import Executions
from stepcluster.keys import RunKeys
from stepcluster.local.cfncluster_standin import install_standin, write_local_cfncluster_config
from stepcluster.plan import build_plan
from stepcluster.service import RunService
from stepcluster.settings import Settings

from functional.test_service import AsTheStateMachineCalls

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
PREFIX = "stepcluster/stack"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedFromSettings"


def recorded(name: str) -> dict:
    return json.loads((ROOT / "events" / f"{name}.json").read_text())


CLEANUP_EVENT = recorded("cluster_cleanup")
SWEEP_EVENT = recorded("cluster_sweep")
STATE_MACHINE_ARN = SWEEP_EVENT["state_machine_arn"]
EXECUTION_ARN = CLEANUP_EVENT["detail"]["executionArn"]   # what moto names "event-test" of it
WAIT = json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 3600, "End": True}}})


@pytest.fixture
def aws(tmp_path, monkeypatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: 1 / 0)   # cfncluster's update check
    runtime.reset()
    with mock_aws():
        s3, ec2 = boto3.client("s3", region_name=REGION), boto3.client("ec2", region_name=REGION)
        cfn = boto3.client("cloudformation", region_name=REGION)
        sfn = boto3.client("stepfunctions", region_name=REGION)
        standin = install_standin(s3, ec2, bucket="stepcluster-templates")
        cluster_config = write_local_cfncluster_config(tmp_path / "cluster.ini", standin)
        (tmp_path / "a.sh").write_text("true\n")
        jobs = parse_jobs_config("[order]\nsequential = a\n\n[job a]\nhandler = a.sh\nlocal_path = a.sh\n",
                                 str(tmp_path / "jobs.ini"), tmp_path)
        plan = build_plan(jobs, tmp_path / "plan", backend="cfncluster", cluster_config=Path(cluster_config))
        role = "arn:aws:iam::123456789012:role/stepcluster-machine"
        machine = sfn.create_state_machine(name=STATE_MACHINE_ARN.rsplit(":", 1)[1], definition=WAIT,
                                           roleArn=role)["stateMachineArn"]
        other_machine = sfn.create_state_machine(name="another-JobsStateMachine", definition=WAIT,
                                                 roleArn=role)["stateMachineArn"]
        assert machine == STATE_MACHINE_ARN
        settings = Settings(backend="cfncluster", resource_prefix=PREFIX, region=REGION,
                            head_node_host_key=HOST_KEY)

        def service(executions=None, backend=True) -> RunService:
            """The cluster function's service: cfncluster's real code, keys and executions in moto."""
            made = CfnClusterBackend(settings, config_path=cluster_config, cfn_client=cfn, ec2_client=ec2) \
                if backend else None
            return AsTheStateMachineCalls(RunService(
                settings, plan=plan, backend=made, keys=RunKeys(prefix=PREFIX),
                executions=executions or Executions(sfn), cfn_client=cfn))

        yield type("Aws", (), dict(cfn=cfn, ec2=ec2, sfn=sfn, plan=plan, machine=machine,
                                   other_machine=other_machine, service=staticmethod(service)))
    runtime.reset()


def start_execution(aws, name="event-test", machine=None) -> str:
    return aws.sfn.start_execution(stateMachineArn=machine or aws.machine, name=name, input="{}")["executionArn"]


def create(svc: RunService, execution_arn: str, cluster_name="demo", **extra) -> dict:
    """The Create Cluster task, with the run record the definition passes."""
    return svc.create_cluster({"input": {"cluster_name": cluster_name, **extra},
                               "execution": execution_arn.rsplit(":", 1)[1],
                               "execution_arn": execution_arn, "plan_digest": svc.plan.digest})


def left(aws) -> tuple[int, int, int]:
    """(live stacks, run key pairs, run secrets)."""
    stacks = [s for s in aws.cfn.describe_stacks()["Stacks"] if s["StackStatus"] != "DELETE_COMPLETE"]
    pairs = [k for k in aws.ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("stepcluster.stack.")]
    secrets = [s for s in boto3.client("secretsmanager").list_secrets()["SecretList"]
               if s["Name"].startswith(f"{PREFIX}/")]
    return len(stacks), len(pairs), len(secrets)


#: Inside the create task: the run key's import, and cfncluster's own CreateStack call.
KEY_IMPORT = "before-call.ec2.ImportKeyPair"
BEFORE_STACK = "before-call.cloudformation.CreateStack"
AFTER_STACK = "after-call.cloudformation.CreateStack"


@contextlib.contextmanager
def during(event: str, action):
    """Run `action` once, at a botocore `event` of a client made from boto3's default session
    after this (cfncluster makes its clients inside create; RunKeys on first use)."""
    session = boto3._get_default_session()
    fired = []

    def hook(**_):
        if not fired:
            fired.append(True)
            action()

    session.events.register(event, hook)
    try:
        yield fired
    finally:
        session.events.unregister(event, hook)


def play(svc: RunService, monkeypatch, event: dict) -> dict:
    """The cluster function's handler, as EventBridge (or the scheduler) invokes it."""
    from handlers import cluster

    monkeypatch.setattr(runtime, "_service", getattr(svc, "service", svc))
    return cluster.handler(event, None)


def cleanup_event(execution_arn: str) -> dict:
    return {**CLEANUP_EVENT, "detail": {**CLEANUP_EVENT["detail"], "executionArn": execution_arn}}


# --------------------------------------------------------------------------------------------
# An abort while Create Cluster runs


def test_an_abort_once_the_stack_exists_but_before_create_returns_leaves_nothing(aws):
    """cfncluster has made the stack and not returned yet when the execution is stopped; the
    cleanup event has not come (or never will): the create's own check deletes it all."""
    svc = aws.service()
    arn = start_execution(aws)
    assert arn == EXECUTION_ARN

    def abort():
        aws.sfn.stop_execution(executionArn=arn, error="UserAborted")

    with during(AFTER_STACK, abort) as fired:
        run = create(svc, arn)
    assert fired and aws.sfn.describe_execution(executionArn=arn)["status"] == "ABORTED"
    assert left(aws) == (0, 0, 0)
    assert run["cluster"]["status"] in ("DELETING", "DELETED")
    assert run["cluster"]["execution_status"] == "ABORTED" and run["cluster"]["key"]["deleted"]


def test_a_cleanup_while_cfncluster_still_creates_leaves_nothing_either(aws, monkeypatch):
    """The cleanup event arrives once the stack exists, while cfncluster's create still runs:
    the cleanup deletes the stack. moto deletes at once, so cfncluster's own describe then
    fails and the create fails (deleting the run's key); in AWS it would see DELETE_IN_PROGRESS."""
    svc = aws.service()
    arn = start_execution(aws)

    def abort_and_clean_up():
        aws.sfn.stop_execution(executionArn=arn)
        assert [c["name"] for c in play(svc, monkeypatch, cleanup_event(arn))["clusters"]] == ["demo"]

    with during(AFTER_STACK, abort_and_clean_up), \
            pytest.raises(ClusterError, match="does not exist"):
        create(svc, arn)
    assert left(aws) == (0, 0, 0)


@pytest.mark.parametrize("moment", [KEY_IMPORT, BEFORE_STACK])
def test_a_cleanup_before_the_stack_exists_is_made_good_by_the_create_itself(aws, monkeypatch, moment):
    """The EventBridge cleanup runs while the create task is still at work (before the run's
    key is imported, or while cfncluster is creating): it finds no stack (and deletes the key,
    if there is one yet). The create then makes the key and the stack; its own check sees
    ABORTED and deletes both."""
    svc = aws.service()
    arn = start_execution(aws)
    seen = {}

    def abort_and_clean_up():
        aws.sfn.stop_execution(executionArn=arn)
        seen["cleanup"] = play(svc, monkeypatch, cleanup_event(arn))
        seen["left"] = left(aws)

    with during(moment, abort_and_clean_up) as fired:
        run = create(svc, arn)
    assert fired and seen["cleanup"] == {"execution": arn, "released": [], "clusters": []} and seen["left"] == (0, 0, 0)
    assert left(aws) == (0, 0, 0)
    assert run["cluster"]["execution_status"] == "ABORTED"


def test_a_timeout_during_create_is_covered_the_same_way(aws):
    from moto.stepfunctions.models import stepfunctions_backends

    svc = aws.service()
    arn = start_execution(aws)

    def time_out():
        execution = stepfunctions_backends["123456789012"][REGION].describe_execution(arn)
        execution.status = "TIMED_OUT"   # moto cannot time a Wait out by itself here

    with during(AFTER_STACK, time_out):
        run = create(svc, arn)
    assert left(aws) == (0, 0, 0) and run["cluster"]["execution_status"] == "TIMED_OUT"


def test_a_running_execution_keeps_its_cluster(aws):
    svc = aws.service()
    arn = start_execution(aws)
    run = create(svc, arn)
    assert run["cluster"]["status"] == "CREATING" and "execution_status" not in run["cluster"]
    assert left(aws) == (1, 1, 1)
    aws.sfn.stop_execution(executionArn=arn)
    svc.cleanup_execution(arn)
    assert left(aws) == (0, 0, 0)


# --------------------------------------------------------------------------------------------
# The periodic sweep


class Unreachable(Executions):
    """Step Functions that cannot be reached for the first `failures` look-ups."""

    def __init__(self, client, failures=1):
        super().__init__(client)
        self.failures = failures

    def status(self, execution_arn):
        if self.failures:
            self.failures -= 1
            raise EndpointConnectionError(endpoint_url="https://states.us-east-1.amazonaws.com")
        return super().status(execution_arn)


def test_the_sweep_deletes_a_cluster_whose_create_finished_after_the_cleanup(aws, monkeypatch):
    """The cleanup ran before the stack existed, and the create's own check could not reach
    Step Functions (a function that died before its check leaves the same): the sweep finds
    the stack by its tag and deletes it."""
    svc = aws.service()
    arn = start_execution(aws)

    def abort_and_clean_up():
        aws.sfn.stop_execution(executionArn=arn)
        assert play(svc, monkeypatch, cleanup_event(arn))["clusters"] == []

    with during(BEFORE_STACK, abort_and_clean_up):
        run = create(aws.service(executions=Unreachable(aws.sfn)), arn)
    assert run["cluster"]["status"] == "CREATING"          # the check failed: left to the sweep
    assert left(aws) == (1, 0, 0)                           # the cleanup took the key, not the stack

    swept = play(svc, monkeypatch, SWEEP_EVENT)
    assert [(s["execution"], s["status"]) for s in swept["swept"]] == [(arn, "ABORTED")]
    assert [c["name"] for c in swept["swept"][0]["clusters"]] == ["demo"]
    assert left(aws) == (0, 0, 0)
    # again, and again: nothing left to find, nothing fails
    for _ in range(2):
        assert play(svc, monkeypatch, SWEEP_EVENT) == {"state_machine": STATE_MACHINE_ARN, "swept": [], "kept": []}
    assert left(aws) == (0, 0, 0)


def test_the_sweep_picks_up_what_is_left_of_each_kind_on_its_own(aws, monkeypatch):
    """A lost cleanup event: a lone secret or a lone key pair is found, as the stack is."""
    svc = aws.service()
    arns = [start_execution(aws, f"run-{i}") for i in range(3)]
    for number, arn in enumerate(arns):
        create(svc, arn, cluster_name=f"c{number}")
        aws.sfn.stop_execution(executionArn=arn)
    keys = RunKeys(prefix=PREFIX)
    stack_only, key_pair_only, secret_only = arns
    for arn in (stack_only, secret_only):
        aws.ec2.delete_key_pair(KeyName=keys.names(arn.rsplit(":", 1)[1])[0])
    for arn in (stack_only, key_pair_only):
        boto3.client("secretsmanager").delete_secret(SecretId=keys.names(arn.rsplit(":", 1)[1])[1],
                                                     ForceDeleteWithoutRecovery=True)
    for number in (1, 2):
        svc.backend.delete({"name": f"c{number}", "stack_name": f"cfncluster-c{number}",
                            "execution_arn": arns[number]})
    assert left(aws) == (1, 1, 1)
    swept = play(svc, monkeypatch, SWEEP_EVENT)
    assert sorted(s["execution"] for s in swept["swept"]) == sorted(arns)
    assert left(aws) == (0, 0, 0)


def test_the_sweep_never_touches_running_succeeded_untagged_or_foreign_clusters(aws, monkeypatch):
    from moto.stepfunctions.models import stepfunctions_backends

    creator = aws.service()
    running = start_execution(aws, "still-running")
    kept = start_execution(aws, "kept-after-success")
    foreign = start_execution(aws, "another-machines", machine=aws.other_machine)
    create(creator, running, "running")
    create(creator, kept, "kept", keep_cluster=True)
    create(creator, foreign, "foreign")
    stepfunctions_backends["123456789012"][REGION].describe_execution(kept).status = "SUCCEEDED"
    aws.sfn.stop_execution(executionArn=foreign)     # ended, but not this state machine's
    untagged = aws.cfn.create_stack(
        StackName="cfncluster-handmade",
        TemplateBody=json.dumps({"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}}))["StackId"]
    before = left(aws)
    assert before == (4, 3, 3)

    def no_backend(*_):
        raise AssertionError("the sweep built the backend (it would import pcluster.lib)")

    monkeypatch.setattr("stepcluster.wiring.get_backend", no_backend)
    sweeper = aws.service(backend=False)
    for _ in range(2):   # repeated sweeps are harmless
        result = play(sweeper, monkeypatch, SWEEP_EVENT)
        assert result["swept"] == []
        assert sorted((k["execution"], k["status"]) for k in result["kept"]) == sorted(
            [(running, "RUNNING"), (kept, "SUCCEEDED")])
        assert left(aws) == before
    # clean up for the count: each with its owner's tag
    for arn, name in ((running, "running"), (kept, "kept"), (foreign, "foreign")):
        creator.backend.delete({"name": name, "stack_name": f"cfncluster-{name}", "execution_arn": arn})
        creator.keys.delete(arn.rsplit(":", 1)[1])
    aws.cfn.delete_stack(StackName=untagged)
    assert left(aws) == (0, 0, 0)


def test_a_sweep_that_finds_nothing_never_builds_the_backend(aws, monkeypatch):
    """For the ParallelCluster function: no pcluster.lib import on an empty sweep."""
    def no_backend(*_):
        raise AssertionError("the sweep built the backend (it would import pcluster.lib)")

    monkeypatch.setattr("stepcluster.wiring.get_backend", no_backend)
    settings = Settings(backend="parallelcluster", resource_prefix=PREFIX, region=REGION)
    svc = RunService(settings, executions=Executions(aws.sfn), cfn_client=aws.cfn)
    assert play(svc, monkeypatch, SWEEP_EVENT) == {"state_machine": STATE_MACHINE_ARN, "swept": [], "kept": []}


def test_a_sweep_of_a_stack_tagged_with_a_forgotten_execution_deletes_it(aws, monkeypatch):
    """Step Functions forgets closed executions after 90 days: an execution of this state
    machine it no longer knows is over."""
    svc = aws.service()
    gone = STATE_MACHINE_ARN.replace(":stateMachine:", ":execution:") + ":closed-long-ago"
    ctx = RunContext("closed-long-ago", gone, "old")
    stack = svc.backend.create(ctx, svc.keys.create(ctx))
    tags = {t["Key"]: t["Value"] for t in aws.cfn.describe_stacks(StackName=stack["stack_id"])["Stacks"][0]["Tags"]}
    assert tags[EXECUTION_TAG] == gone and left(aws) == (1, 1, 1)
    swept = play(svc, monkeypatch, SWEEP_EVENT)
    assert [(s["execution"], s["status"]) for s in swept["swept"]] == [(gone, "GONE")]
    assert left(aws) == (0, 0, 0)


# --------------------------------------------------------------------------------------------
# ParallelCluster: the same service code, pcluster.lib at its boundary (tests/unit's fake)


def parallelcluster(aws, pc):
    import dataclasses

    from stepcluster.clusters.parallelcluster import ParallelClusterBackend
    from unit.test_parallelcluster import USER_CONFIG, FakeEc2

    settings = Settings(backend="parallelcluster", resource_prefix=PREFIX, region=REGION)
    return ParallelClusterBackend(settings, pcluster=pc, ec2_client=FakeEc2(), cluster_config=USER_CONFIG), \
        dataclasses.replace(aws.plan, backend="parallelcluster"), settings


def test_parallelcluster_an_abort_during_create_cluster_is_undone_through_pcluster(aws):
    from unit.test_parallelcluster import FakePcluster

    arn = start_execution(aws)

    class AbortedWhileCreating(FakePcluster):
        def create_cluster(self, **kwargs):
            response = super().create_cluster(**kwargs)      # the cluster (and its stack) exist
            aws.sfn.stop_execution(executionArn=arn)
            return response

    pc = AbortedWhileCreating()
    backend, plan, settings = parallelcluster(aws, pc)
    svc = AsTheStateMachineCalls(RunService(settings, plan=plan, backend=backend, keys=RunKeys(prefix=PREFIX),
                                            executions=Executions(aws.sfn), cfn_client=aws.cfn))
    run = create(svc, arn)
    assert pc.called("delete_cluster") == [{"cluster_name": "demo", "region": REGION}]
    assert pc.clusters["demo"]["clusterStatus"] == "DELETE_IN_PROGRESS"
    assert run["cluster"]["status"] == "DELETING" and run["cluster"]["execution_status"] == "ABORTED"
    assert left(aws) == (0, 0, 0)


def test_parallelcluster_the_sweep_loads_the_backend_only_for_a_tagged_stack(aws, monkeypatch):
    """The stack (named after the cluster, tagged by pcluster from the config's Tags) is found
    with CloudFormation alone; only then is the backend (pcluster.lib) built, to delete it."""
    from unit.test_parallelcluster import FakePcluster

    pc = FakePcluster()
    backend, plan, settings = parallelcluster(aws, pc)
    built = []
    monkeypatch.setattr("stepcluster.wiring.get_backend", lambda *_: built.append(1) or backend)
    svc = AsTheStateMachineCalls(RunService(settings, plan=plan, keys=RunKeys(prefix=PREFIX),
                                            executions=Executions(aws.sfn), cfn_client=aws.cfn))
    arn = start_execution(aws)
    assert play(svc, monkeypatch, SWEEP_EVENT)["swept"] == [] and built == []
    backend.create(RunContext("event-test", arn, "demo"), svc.keys.create(RunContext("event-test", arn, "demo")))
    stack = aws.cfn.create_stack(StackName="demo", Tags=[{"Key": EXECUTION_TAG, "Value": arn}],
                                 TemplateBody=json.dumps({"Resources": {"T": {"Type": "AWS::SNS::Topic"}}}))
    assert play(svc, monkeypatch, SWEEP_EVENT)["kept"] == [{"execution": arn, "status": "RUNNING"}] and built == []
    aws.sfn.stop_execution(executionArn=arn)
    swept = play(svc, monkeypatch, SWEEP_EVENT)
    assert swept["swept"][0]["clusters"] == [{"name": "demo", "status": "DELETING"}] and built == [1]
    assert pc.called("delete_cluster") == [{"cluster_name": "demo", "region": REGION}]
    aws.cfn.delete_stack(StackName=stack["StackId"])        # what pcluster's delete would do
    assert left(aws) == (0, 0, 0)
