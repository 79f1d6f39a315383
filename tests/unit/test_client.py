"""A deployed stack's runs (stepcluster tools/client.py) against moto: the stack found by its
outputs, an execution's status, the recent runs, a run's results and a job's logs, from what
the state machine and the artifacts bucket hold; the command's errors for what is not there."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from stepcluster import cli
from stepcluster.errors import InputError
from stepcluster.tools.client import Runs, execution_input

MACHINE = {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}
TEMPLATE = {"Parameters": {"Machine": {"Type": "String"}},
            "Resources": {"ArtifactsBucket": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "arts"}}},
            "Outputs": {"StateMachineArn": {"Value": {"Ref": "Machine"}},
                        "ArtifactsBucketName": {"Value": {"Ref": "ArtifactsBucket"}}}}


@pytest.fixture
def stack(monkeypatch):
    for var, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    with mock_aws():
        machine = boto3.client("stepfunctions").create_state_machine(
            name="Jobs", definition=json.dumps(MACHINE), roleArn="arn:aws:iam::123456789012:role/r")["stateMachineArn"]
        boto3.client("cloudformation").create_stack(
            StackName="jobs", TemplateBody=json.dumps(TEMPLATE),
            Parameters=[{"ParameterKey": "Machine", "ParameterValue": machine}])
        s3 = boto3.client("s3")
        manifest = {"execution": "run-1", "jobs": {
            "prep": {"state": "SUCCEEDED", "resumed_from": "run-0"},
            "sim": {"state": "FAILED", "exit_code": 3},
            "report": {"state": "NOT_STARTED"}}}
        for key, body in {"run-1/manifest.json": json.dumps(manifest), "run-1/sim/stdout": "sim out\n",
                          "run-1/sim/stderr": "sim err\n", "run-1/sim/output/x.dat": "x",
                          "run-1/sim/3/stdout": "task 3\n", "run-0/prep/stdout": "prep out\n"}.items():
            s3.put_object(Bucket="arts", Key=key, Body=body.encode())
        runs = Runs.of_stack("jobs")
        runs.start(execution_input("c1"), name="run-1")
        yield runs


def test_the_stack_is_found_by_its_outputs(stack):
    assert stack.bucket == "arts" and stack.state_machine_arn.endswith(":stateMachine:Jobs")
    with pytest.raises(InputError, match="cannot read stack 'nope'"):
        Runs.of_stack("nope")


def test_an_executions_status_says_its_jobs_by_state_and_where_its_results_are(stack):
    status = stack.status("run-1")
    assert status["execution"] == "run-1" and status["status"] in ("RUNNING", "SUCCEEDED")
    assert status["jobs"] == {"SUCCEEDED": 1, "FAILED": 1, "NOT_STARTED": 1}
    assert status["results"] == "s3://arts/run-1/"
    assert [r["execution"] for r in stack.executions()] == ["run-1"]
    assert stack.executions()[0]["failed"] == 1 and stack.executions()[0]["jobs"] == 3


def test_results_come_down_by_job_a_resumed_jobs_from_the_run_that_made_them(stack, tmp_path):
    written = stack.results("run-1", tmp_path)
    assert sorted(written) == ["prep/stdout", "sim/3/stdout", "sim/output/x.dat", "sim/stderr", "sim/stdout"]
    assert (tmp_path / "prep" / "stdout").read_text() == "prep out\n"
    assert stack.results("run-1", tmp_path / "one", job="sim") and not (tmp_path / "one" / "prep").exists()
    with pytest.raises(InputError, match="has no job 'nope': its jobs are prep, sim, report"):
        stack.results("run-1", tmp_path, job="nope")
    with pytest.raises(InputError, match="kept nothing in s3://arts/run-9/"):
        stack.results("run-9", tmp_path)


def test_logs_are_a_jobs_streams_and_a_tasks(stack):
    assert stack.log("run-1", "sim") == b"sim out\n"
    assert stack.log("run-1", "sim", stderr=True) == b"sim err\n"
    assert stack.log("run-1", "sim", task="3") == b"task 3\n"
    assert stack.log("run-1", "prep") == b"prep out\n"
    with pytest.raises(InputError, match="no s3://arts/run-1/report/stdout: the job did not start"):
        stack.log("run-1", "report")


def test_the_commands_print_what_was_asked_and_exit_2_on_what_is_not_there(stack, tmp_path, capsys):
    assert cli.main(["status", "run-1", "--stack", "jobs"]) == 0
    assert "jobs: 1 SUCCEEDED, 1 FAILED, 1 NOT_STARTED" in capsys.readouterr().out
    assert cli.main(["executions", "--stack", "jobs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["execution"] == "run-1"
    assert cli.main(["logs", "run-1", "sim", "--stack", "jobs", "--stderr"]) == 0
    assert capsys.readouterr().out == "sim err\n"
    assert cli.main(["results", "run-1", "--stack", "jobs", "-o", str(tmp_path), "--job", "sim"]) == 0
    assert "4 files into" in capsys.readouterr().out
    assert cli.main(["logs", "run-1", "report", "--stack", "jobs"]) == 2
    assert "the job did not start" in capsys.readouterr().err
    assert cli.main(["start", "--stack", "jobs", "--cluster-name", "c2", "--max-hours", "2", "--json"]) == 0
    started = json.loads(capsys.readouterr().out)
    assert started["console_url"].startswith("https://us-east-1.console.aws.amazon.com/states/home")
    arn = started["execution_arn"]
    given = json.loads(boto3.client("stepfunctions").describe_execution(executionArn=arn)["input"])
    assert given == {"cluster_name": "c2", "max_hours": 2.0}
