"""`stepcluster cleanup`: the EventBridge rule's event built in code, the command's parsing and
bad inputs, and the deployed-stack path against moto: a CloudFormation stack in moto holding the
cluster function, found by its logical id, and invoked (RequestResponse) through the run-local
LocalLambdaEndpoint (AWS_ENDPOINT_URL_LAMBDA), which serves the project's real handler."""

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from stepcluster import cleanup_client, cli, runtime
from stepcluster.errors import ClusterError, InputError
from stepcluster.local.lambda_endpoint import LocalLambdaEndpoint

ROOT = Path(__file__).resolve().parents[2]
RECORDED = json.loads((ROOT / "events" / "cluster_cleanup.json").read_text())
REGION, ACCOUNT = "us-east-1", "123456789012"


def test_the_built_event_is_the_recorded_one_apart_from_its_id_and_time():
    """The CLI may be installed without events/: it builds the event; this keeps the two equal."""
    detail = RECORDED["detail"]
    built = cleanup_client.cleanup_event(detail["executionArn"], status=detail["status"], input=detail["input"],
                                         start_ms=detail["startDate"], stop_ms=detail["stopDate"])
    assert {k: v for k, v in built.items() if k not in ("id", "time")} == \
        {k: v for k, v in RECORDED.items() if k not in ("id", "time")}
    assert set(built) == set(RECORDED) and set(built["detail"]) == set(detail)
    assert built["id"] != RECORDED["id"] and built["time"].endswith("Z")


def test_the_event_names_the_execution_it_is_given():
    arn = f"arn:aws:states:eu-west-1:{ACCOUNT}:execution:my-JobsStateMachine-AbC:local-20261202-080000-1a2b3c"
    event = cleanup_client.cleanup_event(arn)
    assert event["detail"]["executionArn"] == arn and event["resources"] == [arn]
    assert event["detail"]["stateMachineArn"] == f"arn:aws:states:eu-west-1:{ACCOUNT}:stateMachine:my-JobsStateMachine-AbC"
    assert (event["region"], event["account"], event["detail"]["name"]) == ("eu-west-1", ACCOUNT, "local-20261202-080000-1a2b3c")
    assert event["detail"]["status"] == "ABORTED"


@pytest.mark.parametrize("text", [
    "local-20261202-080000-1a2b3c",                                     # a name, not an ARN
    f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:sm",              # a state machine
    "arn:aws:states:us-east-1:123:execution:sm:x",                      # account of 3 digits
    f"arn:aws:states:us-east-1:{ACCOUNT}:execution:sm:..",              # would leave the runs' folder
    f"arn:aws:states:us-east-1:{ACCOUNT}:execution:sm:a/b",
    f"arn:aws:states:us-east-1:{ACCOUNT}:execution:sm:",
    "",
])
def test_what_is_not_an_execution_arn_is_refused(text):
    with pytest.raises(InputError, match="is not an execution ARN"):
        cleanup_client.parse_execution_arn(text)


@pytest.mark.parametrize("argv, words", [
    (["cleanup", "../etc"], "is not an execution name"),
    (["cleanup", "."], "is not an execution name"),
    (["cleanup", "arn:aws:states:x"], "is not an execution ARN"),
    (["cleanup", "arn:aws:states:x", "--stack", "s"], "is not an execution ARN"),
    (["cleanup", "local-x", "--stack", "s", "--scheduler", "sge"], "--scheduler: only for a local cleanup"),
    (["cleanup", "local-x", "--stack", "s", "--artifacts-dir", "d"], "--artifacts-dir: only for a local cleanup"),
    (["cleanup", "local-x", "--region", "eu-west-1"], "--region: only with --stack"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_local_and_stack_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["cleanup", "local-x", "--local", "--stack", "s"])
    assert exited.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Against a deployed stack (moto's)

STACK_TEMPLATE = {
    "Resources": {
        "ClusterFunctionRole": {"Type": "AWS::IAM::Role", "Properties": {"AssumeRolePolicyDocument": {
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service": "lambda.amazonaws.com"}}]}}},
        "ClusterFunction": {"Type": "AWS::Lambda::Function", "Properties": {
            "Handler": "handlers.cluster.handler", "Runtime": "python3.11",
            "Role": {"Fn::GetAtt": ["ClusterFunctionRole", "Arn"]},
            "Code": {"ZipFile": "# served by LocalLambdaEndpoint"}}},
        "ArtifactsBucket": {"Type": "AWS::S3::Bucket"},
    },
    "Outputs": {"ArtifactsBucketName": {"Value": {"Ref": "ArtifactsBucket"}}},
}


class Cleanups:
    """The service behind the real handler: records the cleanups asked for; fails when told."""

    def __init__(self):
        self.asked, self.fail = [], None

    def cleanup_execution(self, arn):
        self.asked.append(arn)
        if self.fail:
            raise self.fail
        return {"execution": arn, "clusters": [],
                "released": {"run_dir": f"/home/hpc/stepcluster-runs/{arn.rsplit(':', 1)[-1]}", "removed": True}}


@pytest.fixture
def deployed(monkeypatch):
    """A moto stack with the cluster function, a stopped execution, and the function served by
    the project's handler (handlers.cluster) under its physical name."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    service = Cleanups()
    monkeypatch.setattr(runtime, "_service", service)
    with mock_aws():
        cfn = boto3.client("cloudformation", region_name=REGION)
        cfn.create_stack(StackName="prod", TemplateBody=json.dumps(STACK_TEMPLATE), Capabilities=["CAPABILITY_IAM"])
        function = cfn.describe_stack_resource(StackName="prod", LogicalResourceId="ClusterFunction")[
            "StackResourceDetail"]["PhysicalResourceId"]
        sfn = boto3.client("stepfunctions", region_name=REGION)
        machine = sfn.create_state_machine(
            name="prod-JobsStateMachine", roleArn=f"arn:aws:iam::{ACCOUNT}:role/r",
            definition=json.dumps({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 600, "End": True}}}))
        arn = sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name="run-1",
                                  input='{"cluster_name": "demo"}')["executionArn"]
        with LocalLambdaEndpoint({function: "handlers.cluster"}) as endpoint:
            monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", endpoint.url)
            yield {"sfn": sfn, "arn": arn, "function": function, "service": service, "endpoint": endpoint}


def test_the_stacks_cluster_function_gets_the_rules_event_and_its_result_is_printed(deployed, capsys):
    deployed["sfn"].stop_execution(executionArn=deployed["arn"])
    assert cli.main(["cleanup", deployed["arn"], "--stack", "prod"]) == 0
    out = capsys.readouterr().out
    assert deployed["service"].asked == [deployed["arn"]]
    assert deployed["endpoint"].invocations == {deployed["function"]: 1}
    assert f"by {deployed['function']} (stack prod)" in out
    assert "removed /home/hpc/stepcluster-runs/run-1 on the head node" in out
    assert "results: s3://prod-artifactsbucket-" in out and "/run-1/" in out
    assert '"run_dir": "/home/hpc/stepcluster-runs/run-1"' in out


def test_the_event_carries_what_step_functions_says_of_the_execution(deployed, monkeypatch):
    deployed["sfn"].stop_execution(executionArn=deployed["arn"])
    seen = []
    deployed["endpoint"].fault = lambda name, event: seen.append(event)
    cleanup_client.cleanup_deployed(deployed["arn"], "prod")
    [event] = seen
    assert event["detail-type"] == "Step Functions Execution Status Change"
    assert event["detail"]["executionArn"] == deployed["arn"]
    assert event["detail"]["status"] == "ABORTED" and event["detail"]["input"] == '{"cluster_name": "demo"}'
    assert event["detail"]["stopDate"] >= event["detail"]["startDate"] > 0


def test_a_function_error_prints_its_message_and_exits_1(deployed, capsys):
    deployed["sfn"].stop_execution(executionArn=deployed["arn"])
    deployed["service"].fail = ClusterError("the head node could not be reached")
    assert cli.main(["cleanup", deployed["arn"], "--stack", "prod"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "stepcluster: the cleanup failed: the head node could not be reached"


def test_a_running_execution_is_not_cleaned_up_under_it(deployed, capsys):
    assert cli.main(["cleanup", deployed["arn"], "--stack", "prod"]) == 2
    assert "is still RUNNING: stop it first" in capsys.readouterr().err
    assert deployed["service"].asked == []


@pytest.mark.parametrize("stack, arn, words", [
    ("nope", None, "stack 'nope' not found"),
    ("prod", f"arn:aws:states:{REGION}:{ACCOUNT}:execution:prod-JobsStateMachine:never-ran", "no such execution"),
])
def test_no_such_stack_or_execution_is_exit_2(deployed, capsys, stack, arn, words):
    assert cli.main(["cleanup", arn or deployed["arn"], "--stack", stack]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert deployed["service"].asked == []


def test_a_stack_without_a_cluster_function_is_exit_2(deployed, capsys):
    boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName="other", TemplateBody=json.dumps({"Resources": {"B": {"Type": "AWS::S3::Bucket"}}}))
    assert cli.main(["cleanup", deployed["arn"], "--stack", "other"]) == 2
    assert "stack 'other' has no cluster function (ClusterFunction or ParallelClusterFunction)" in capsys.readouterr().err


def test_the_parallelcluster_stacks_function_is_found_by_its_own_logical_id(deployed):
    template = json.loads(json.dumps(STACK_TEMPLATE))
    template["Resources"]["ParallelClusterFunction"] = template["Resources"].pop("ClusterFunction")
    cfn = boto3.client("cloudformation", region_name=REGION)
    cfn.create_stack(StackName="pc", TemplateBody=json.dumps(template), Capabilities=["CAPABILITY_IAM"])
    assert "-ParallelClusterFunction-" in cleanup_client.cluster_function(cfn, "pc")
