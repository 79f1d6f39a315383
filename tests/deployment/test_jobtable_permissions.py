"""The S3 calls of a wide run's job table (stepcluster jobtable.py), recorded at botocore's
boundary under moto, are each allowed by the roles of the functions that load and store it:
Submit Jobs, Poll Jobs, Cancel Jobs and Release Head Node. moto enforces no IAM: without this a
missing permission would show only in AWS, on the first run of more jobs than a record carries."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from cfnlint.decode import cfn_yaml
from moto import mock_aws

from stepcluster.jobtable import JobTable, new_table
from stepcluster.record import JobRecord, JobState, Run

from .iam import role_policy
from .permissions import call_needs, refused
from .recording import Recorder
from .template import STACK

ROOT = Path(__file__).resolve().parents[2]
BUCKET = f"{STACK}-artifactsbucket-0a1b2c3d"
NAMES = [f"j{i}" for i in range(2500)]
TABLE_USERS = ["SubmitJobsFunctionRole", "PollJobsFunctionRole", "CancelJobsFunctionRole",
               "ReleaseHeadNodeFunctionRole"]


@pytest.fixture(scope="module")
def calls():
    """Every S3 call of three tasks on a wide run: the first store, a load and a store that
    replaces a shard, and one more that deletes what that replaced."""
    recorder = Recorder()
    with mock_aws(), recorder.installed():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        recorder.take()
        run = Run("exec-1", order="parallel", jobs_table=new_table(len(NAMES)))
        for state in (JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED):
            table = JobTable(s3, BUCKET, NAMES)
            given = run
            run = table.load(run)
            run.jobs["j1"] = JobRecord(state=state, job_id="7")
            run = table.store(run, given)
        return [c for c in recorder.take() if c.service == "s3"]


def test_the_recording_covers_every_kind_of_call(calls):
    assert {c.operation for c in calls} == {"PutObject", "GetObject", "DeleteObjects"}


@pytest.mark.parametrize("role", TABLE_USERS)
@pytest.mark.parametrize("backend", ["existing", "parallelcluster"])
def test_each_function_that_works_on_the_jobs_may_make_every_call(calls, role, backend):
    template = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
    policy = role_policy(template, role, {"ClusterBackend": backend})
    assert refused(policy, call_needs(calls, {}, "jobtable")) == []
    # and no further than the tables: not a job's results, not another bucket
    assert not policy.allows("s3:DeleteObject", f"arn:aws:s3:::{BUCKET}/exec-1/j1/stdout", {})
    assert not policy.allows("s3:GetObject", "arn:aws:s3:::other-bucket/exec-1/.jobs/0-x.json", {})


# -- a resumed run: Create Cluster's check and Submit Jobs' reading of the earlier manifest --------

@pytest.fixture(scope="module")
def resume_calls():
    """Every call of resume's checks: the earlier manifest read (and one that is not there:
    S3 says "no such key" only to a caller that may list the bucket) and the earlier
    execution's status."""
    from stepcluster import resume
    from stepcluster.errors import InputError
    from stepcluster.executions import Executions

    from .template import execution_arn

    recorder = Recorder()
    with mock_aws(), recorder.installed():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        earlier = execution_arn("run-1")
        s3.put_object(Bucket=BUCKET, Key="run-1/manifest.json",
                      Body=json.dumps({"execution": "run-1", "execution_arn": earlier, "jobs": {}}))
        recorder.take()
        resume.earlier_manifest(s3, BUCKET, "run-1", execution_arn("run-2"))
        with pytest.raises(InputError):
            resume.earlier_manifest(s3, BUCKET, "run-9", execution_arn("run-2"))
        Executions(region="us-east-1").status(earlier)
        return recorder.take()


@pytest.mark.parametrize("role, backend", [("ClusterFunctionRole", "existing"), ("ClusterFunctionRole", "cfncluster"),
                                           ("ParallelClusterFunctionRole", "parallelcluster")])
def test_create_cluster_may_check_the_run_it_resumes(resume_calls, role, backend):
    assert {c.name for c in resume_calls} == {"s3:GetObject", "stepfunctions:DescribeExecution"}
    template = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
    policy = role_policy(template, role, {"ClusterBackend": backend})
    assert refused(policy, call_needs(resume_calls, {}, "resume check")) == []
    assert policy.allows("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {})


@pytest.mark.parametrize("backend", ["existing", "parallelcluster"])
def test_submit_jobs_may_read_the_manifest_of_the_run_it_resumes(resume_calls, backend):
    template = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
    policy = role_policy(template, "SubmitJobsFunctionRole", {"ClusterBackend": backend})
    reads = [c for c in resume_calls if c.service == "s3"]
    assert refused(policy, call_needs(reads, {}, "resume")) == []
    assert policy.allows("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {})


# -- told when a run ends: the notify function's calls ------------------------------------------

@pytest.fixture(scope="module")
def notify_calls():
    """Every call of the notify function telling a run's end: the execution, its manifest (and
    one that kept none), the message."""
    from stepcluster.notify import Notifier

    from .template import STATE_MACHINE_ARN, execution_arn

    recorder = Recorder()
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}), recorder.installed():
        sfn, s3, sns = (boto3.client(n, region_name="us-east-1") for n in ("stepfunctions", "s3", "sns"))
        s3.create_bucket(Bucket=BUCKET)
        topic = sns.create_topic(Name="runs")["TopicArn"]
        machine = sfn.create_state_machine(name=STATE_MACHINE_ARN.rsplit(":", 1)[-1], roleArn="arn:aws:iam::123456789012:role/r",
                                           definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}))
        for name in ("run-1", "run-2"):
            sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name=name, input="{}")
        s3.put_object(Bucket=BUCKET, Key="run-1/manifest.json", Body=b'{"jobs": {}}')
        recorder.take()
        for name in ("run-1", "run-2"):
            Notifier(sfn, s3, sns, BUCKET, topic).notify(execution_arn(name))
        return recorder.take(), topic


@pytest.mark.parametrize("parameters", [{"NotificationEmail": "me@example.org"},
                                        {"NotificationTopicArn": "arn:aws:sns:us-east-1:123456789012:runs"}])
def test_the_notify_function_may_make_every_call_and_publish_only_to_its_topic(notify_calls, parameters):
    calls, topic = notify_calls
    assert {c.name for c in calls} == {"stepfunctions:DescribeExecution", "s3:GetObject", "sns:Publish"}
    template = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
    policy = role_policy(template, "NotifyFunctionRole", {"ClusterBackend": "existing", **parameters})
    ours = topic if "NotificationTopicArn" in parameters else None
    needs = [c for c in calls if c.service != "sns"]
    assert refused(policy, call_needs(needs, {}, "notify")) == []
    assert policy.allows("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {})
    published = parameters.get("NotificationTopicArn") or policy_topic(template, parameters)
    assert policy.allows("sns:Publish", published, {}) and (ours is None or policy.allows("sns:Publish", ours, {}))
    assert not policy.allows("sns:Publish", "arn:aws:sns:us-east-1:123456789012:someone-elses", {})


def policy_topic(template, parameters):
    """The ARN the stack's own topic would have (the resolver's physical name of NotificationTopic)."""
    from .iam import Resolver

    return Resolver(template, {"ClusterBackend": "existing", **parameters}).value({"Ref": "NotificationTopic"})


# -- a run's usage: the instances its cluster ran ----------------------------------------------

@pytest.mark.parametrize("role, backend", [("ClusterFunctionRole", "cfncluster"),
                                           ("ParallelClusterFunctionRole", "parallelcluster")])
def test_the_cluster_function_may_count_the_instances_its_cluster_ran(role, backend):
    from stepcluster.clusters.base import tagged_instances

    from .template import execution_arn

    recorder = Recorder()
    with mock_aws(), recorder.installed():
        tagged_instances(boto3.client("ec2", region_name="us-east-1"), execution_arn("run-1"))
        calls = recorder.take()
    assert {c.name for c in calls} == {"ec2:DescribeInstances"}
    template = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
    policy = role_policy(template, role, {"ClusterBackend": backend})
    # DescribeInstances has no resource-level permission: "*", in this region
    assert policy.allows("ec2:DescribeInstances", "*", {"aws:RequestedRegion": "us-east-1"})
    assert not policy.allows("ec2:DescribeInstances", "*", {"aws:RequestedRegion": "eu-west-1"})
