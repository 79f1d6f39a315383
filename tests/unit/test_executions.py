"""The execution-status look-up (Step Functions DescribeExecution, in moto)."""

import json

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from stepcluster.errors import InputError
from stepcluster.executions import ENDED, Executions, execution_prefix

MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:stepcluster-JobsStateMachine"


def test_the_prefix_of_a_state_machines_executions():
    assert execution_prefix(MACHINE) == "arn:aws:states:us-east-1:123456789012:execution:stepcluster-JobsStateMachine:"
    assert execution_prefix(MACHINE.replace("arn:aws:", "arn:aws-cn:")).startswith("arn:aws-cn:states:")
    for bad in ("", "stepcluster-JobsStateMachine", MACHINE.replace(":stateMachine:", ":execution:") + ":x",
                MACHINE + ":alias"):
        with pytest.raises(InputError):
            execution_prefix(bad)


def test_status_running_ended_and_unknown(monkeypatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    with mock_aws():
        sfn = boto3.client("stepfunctions")
        definition = json.dumps({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 60, "End": True}}})
        machine = sfn.create_state_machine(name="stepcluster-JobsStateMachine", definition=definition,
                                           roleArn="arn:aws:iam::123456789012:role/r")["stateMachineArn"]
        arn = sfn.start_execution(stateMachineArn=machine, name="run-1")["executionArn"]
        executions = Executions(region="us-east-1")        # the lazy default client
        assert executions.status(arn) == "RUNNING"
        sfn.stop_execution(executionArn=arn)
        assert executions.status(arn) == "ABORTED" and "ABORTED" in ENDED
        assert Executions(sfn).status(execution_prefix(machine) + "forgotten") is None
        with pytest.raises(ClientError):                   # not an ARN: an error, not "unknown"
            Executions(sfn).status("run-1")
    assert ENDED == {"ABORTED", "TIMED_OUT", "FAILED"}     # the cleanup rule's statuses
