"""Told when a run ends (stepcluster notify.py, handlers/notify.py): the message moto's SNS
delivers to a queue subscribed to the topic, read back whole, for a failed run, a run that kept
nothing, and a run too wide for a table of every job (SNS's 256 KB)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from stepcluster import notify, runtime
from stepcluster.errors import InputError
from handlers import notify as notify_handler

ROOT = Path(__file__).resolve().parents[2]
MACHINE = {"StartAt": "Fail", "States": {"Fail": {"Type": "Fail", "Error": "JobFailed",
                                                  "Cause": "Job 'sim' (slurm job 12) ended FAILED with exit code 3"}}}


@pytest.fixture
def aws(monkeypatch):
    for var, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sns, sqs, s3 = boto3.client("sns"), boto3.client("sqs"), boto3.client("s3")
        topic = sns.create_topic(Name="runs")["TopicArn"]
        queue = sqs.create_queue(QueueName="inbox")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        s3.create_bucket(Bucket="arts")
        # what the template's Globals give every function, and this one's own topic
        for var, value in (("SCHEDULER", "slurm"), ("HEAD_NODE_HOST", "10.0.0.9"), ("HEAD_NODE_USER", "hpc"),
                           ("HEAD_NODE_HOST_KEY", "SHA256:x"), ("SSH_KEY_SECRET_ID", "secret")):
            monkeypatch.setenv(f"STEPCLUSTER_{var}", value)
        monkeypatch.setenv("STEPCLUSTER_NOTIFY_TOPIC_ARN", topic)
        monkeypatch.setenv("STEPCLUSTER_ARTIFACTS_BUCKET", "arts")
        sfn = boto3.client("stepfunctions")
        machine = sfn.create_state_machine(name="Jobs", definition=json.dumps(MACHINE),
                                           roleArn="arn:aws:iam::123456789012:role/r")["stateMachineArn"]

        def run(name, manifest=None):
            if manifest is not None:
                s3.put_object(Bucket="arts", Key=f"{name}/manifest.json", Body=json.dumps(manifest).encode())
            return sfn.start_execution(stateMachineArn=machine, name=name, input="{}")["executionArn"]

        def received():
            messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
            return [json.loads(m["Body"]) for m in messages]
        yield run, received


def event_for(arn):
    event = json.loads((ROOT / "events" / "notify.json").read_text())
    event["detail"]["executionArn"] = arn
    return event


def wait_ended(arn):
    sfn = boto3.client("stepfunctions")
    for _ in range(100):
        if sfn.describe_execution(executionArn=arn)["status"] != "RUNNING":
            return
        time.sleep(0.1)
    raise AssertionError(f"{arn} did not end")


def test_a_failed_run_is_told_with_its_cause_jobs_results_and_link(aws):
    run, received = aws
    manifest = {"execution": "run-7", "cluster_name": "c1", "jobs": {
        "prep": {"state": "SUCCEEDED", "job_id": "11", "exit_code": 0,
                 "started": "2026-12-06T10:00:00Z", "ended": "2026-12-06T10:00:05Z"},
        "sim": {"state": "FAILED", "job_id": "12", "exit_code": 3, "started": "2026-12-06T10:00:06Z",
                "ended": "2026-12-06T11:02:06Z", "attempts": [{"attempt": 1, "job_id": "10"}]},
        "report": {"state": "NOT_STARTED"}}}
    arn = run("run-7", manifest)
    wait_ended(arn)
    result = notify_handler.handler(event_for(arn), None)
    assert result["status"] == "FAILED"
    (message,) = received()
    assert message["Subject"] == "stepcluster: run-7 FAILED (cluster c1)"
    body = message["Message"]
    assert body.startswith("Execution run-7 ended FAILED on cluster c1.\nStarted ")
    assert "\nJobFailed: Job 'sim' (slurm job 12) ended FAILED with exit code 3\n" in body
    assert "Jobs: 3 (1 SUCCEEDED, 1 FAILED, 1 NOT_STARTED)" in body
    table = body.split("Jobs: 3")[1]
    assert table.splitlines()[1:5] == [
        "job     state        exit   duration  attempts",
        "prep    SUCCEEDED       0    0:00:05         1",
        "sim     FAILED          3    1:02:00         2",
        "report  NOT_STARTED     -          -         0"]
    assert "Results: s3://arts/run-7/ (manifest.json lists every job)" in body
    assert f"Console: https://us-east-1.console.aws.amazon.com/states/home?region=us-east-1#/v2/executions/details/{arn}" in body


def test_a_run_that_kept_nothing_is_told_without_a_table(aws):
    run, received = aws
    arn = run("run-8")
    wait_ended(arn)
    notify_handler.handler(event_for(arn), None)
    (message,) = received()
    assert "\nJobs: " not in message["Message"] and "JobFailed:" in message["Message"]


def test_a_wide_run_fits_snss_256_kb(aws):
    run, received = aws
    jobs = {f"job-{i:05d}-{'x' * 40}": {"state": "SUCCEEDED", "job_id": str(i), "exit_code": 0}
            for i in range(10_000)}
    arn = run("run-9", {"execution": "run-9", "jobs": jobs})
    wait_ended(arn)
    result = notify_handler.handler(event_for(arn), None)
    (message,) = received()
    assert result["bytes"] <= notify.MESSAGE_BYTES
    assert f"... and {10_000 - notify.TABLE_ROWS} more jobs (the manifest lists them)" in message["Message"]


def test_a_subject_is_one_line_of_at_most_100_characters():
    subject, _ = notify.message({"name": "r" * 90, "status": "SUCCEEDED", "executionArn":
                                 "arn:aws:states:eu-west-1:1:execution:m:r"}, {"cluster_name": "c\nx"}, None)
    assert len(subject) == 100 and "\n" not in subject


def test_anything_but_the_rules_event_is_refused(aws, monkeypatch):
    with pytest.raises(InputError, match="Execution Status Change"):
        notify_handler.handler({"action": "create"}, None)
    monkeypatch.delenv("STEPCLUSTER_NOTIFY_TOPIC_ARN")
    with pytest.raises(InputError, match="no topic to tell"):
        runtime.notify_task("arn:aws:states:us-east-1:123456789012:execution:Jobs:x")
