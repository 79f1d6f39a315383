"""cfncluster's own code creating and deleting a (stand-in) cluster stack in moto, with the
jobs running on the local head node it points at: every teardown path, and after each one
nothing the run created is left (stacks, key pairs, secrets counted in moto)."""

import functools

import boto3
import pytest

from stepcluster.local import runner

from .conftest import abort_at_first_poll, cleanup_event, crash_polling

pytestmark = pytest.mark.e2e
run_local = functools.partial(runner.run_local, backend="cfncluster", timeout=150)
# What a local cfncluster run registers as the user's own key: never deleted by a run.
USER_KEY_PAIRS = {"local-head-node"}
USER_SECRETS = {"stepcluster/local-head-node-key"}


def leftovers() -> dict:
    """What the run created and left behind, in moto."""
    cfn, ec2, sm = boto3.client("cloudformation"), boto3.client("ec2"), boto3.client("secretsmanager")
    stacks = [s["StackName"] for s in cfn.describe_stacks()["Stacks"]
              if s["StackStatus"] != "DELETE_COMPLETE" and s["StackName"] != runner.LOCAL_STACK]   # (the deployment)
    pairs = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"] not in USER_KEY_PAIRS]
    secrets = [s["Name"] for s in sm.list_secrets()["SecretList"] if s["Name"] not in USER_SECRETS]
    running = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
               if i["State"]["Name"] not in ("terminated", "shutting-down")]
    return {"stacks": stacks, "key_pairs": pairs, "secrets": secrets, "instances": running}


NOTHING = {"stacks": [], "key_pairs": [], "secrets": [], "instances": []}


class Recorder:
    def __init__(self):
        self.left = None

    def __call__(self, report):
        self.left = leftovers()


def test_the_example_runs_on_a_cfncluster_stack_that_is_then_deleted(local_cluster):
    seen = {}

    def during(endpoint):
        def watch(name, event):
            if name == "PollJobsFunction" and "stacks" not in seen:
                seen["stacks"] = [s["StackName"] for s in boto3.client("cloudformation").describe_stacks()["Stacks"]
                                  if s["StackName"] != runner.LOCAL_STACK]
                seen["params"] = boto3.client("cloudformation").describe_stacks(
                    StackName="cfncluster-cfn-demo")["Stacks"][0]["Parameters"]
        endpoint.fault = watch

    after = Recorder()
    report = run_local("examples/jobs.ini", "cfn-demo", cluster=local_cluster, on_start=during, on_finish=after)
    assert report.status == "SUCCEEDED", report.cause
    assert seen["stacks"] == ["cfncluster-cfn-demo"]            # it existed while jobs ran
    assert {"ParameterKey": "Scheduler", "ParameterValue": "slurm"} in seen["params"]
    assert report.output["cluster"]["status"] == "DELETED"
    assert report.output["cluster"]["head_node"]["user"] == "hpc"  # discovered from the stack
    # the run's usage: the instance the stack ran (moto's EC2, tagged by CloudFormation with the
    # run's execution), from its launch to the deletion
    assert set(report.usage["instance_hours"]) == {"t2.micro"} and 0 < report.usage["instance_hours"]["t2.micro"] < 1
    assert after.left == NOTHING


def test_a_failing_job_still_deletes_the_stack(local_cluster, write_config):
    config = write_config("parallel", {"bad": "exit 5", "long": "sleep 60"})
    after = Recorder()
    report = run_local(config, "cfn-jobfail", cluster=local_cluster, on_finish=after)
    assert report.status == "FAILED" and report.error == "JobFailed"
    assert "exit code 5" in report.cause
    assert after.left == NOTHING


def test_a_stack_that_fails_to_create_ends_the_run_with_its_reason(local_cluster, write_config):
    config = write_config("sequential", {"a": "true"})
    after = Recorder()
    report = run_local(config, "cfn-broken", cluster=local_cluster, on_finish=after,
                       standin_failure="The requested instance type (c9.huge) is not supported")
    assert report.status == "FAILED" and report.error == "ClusterFailed"
    assert "c9.huge" in report.cause and "cfn-broken" in report.cause
    assert "PrepareHeadNodeFunction" not in report.invocations
    assert after.left == NOTHING


def test_a_cluster_not_ready_in_time_is_deleted(local_cluster, write_config):
    # No host key can be pinned (moto prints none, and none is configured): never ready.
    config = write_config("sequential", {"a": "true"})
    after = Recorder()
    report = run_local(config, "cfn-slow", cluster=local_cluster, on_finish=after,
                       settings_overrides={"head_node_host_key": "", "create_timeout_seconds": 3})
    assert report.status == "FAILED" and report.error == "ClusterFailed"
    assert "not ready" in report.cause or "host key" in report.cause
    assert after.left == NOTHING


def test_a_lambda_error_mid_run_still_deletes_the_stack(local_cluster, write_config):
    config = write_config("sequential", {"a": "sleep 30"})
    after = Recorder()
    report = run_local(config, "cfn-crash", cluster=local_cluster, on_start=crash_polling, on_finish=after)
    assert report.status == "FAILED" and report.error == "RuntimeError"
    assert after.left == NOTHING


def test_an_aborted_run_is_cleaned_up_by_the_eventbridge_handler(local_cluster, write_config, head_node):
    """An abort skips the teardown states; the rule on ABORTED executions invokes the cluster
    function with the status-change event, which has Release Head Node (in the VPC: the cluster
    function is not) cancel the run's job and keep what it wrote so far, then deletes what
    carries the execution's tag. (moto delivers no such events to rules: the recorded event is
    played here; the release is invoked through the local Lambda endpoint.)"""
    import time

    from handlers import cluster

    from .conftest import remote_exists

    config = write_config("sequential", {"a": 'echo halfway > "$STEPCLUSTER_OUTPUT/a.txt"; sleep 60'})
    seen = {}

    def cleanup(report):
        execution = report.execution_arn.rsplit(":", 1)[-1]
        deadline = time.monotonic() + 30          # the job has started and written its first file
        while not remote_exists(head_node, f"stepcluster-runs/{execution}/jobs/a/output/a.txt"):
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.5)
        seen["before"] = leftovers()
        seen["result"] = cluster.handler(cleanup_event(report.execution_arn), None)
        seen["after"] = leftovers()
        s3 = boto3.client("s3")
        seen["kept"] = s3.get_object(Bucket=runner.ARTIFACTS_BUCKET, Key=f"{execution}/a/output/a.txt")["Body"].read()
        seen["folder"] = remote_exists(head_node, f"stepcluster-runs/{execution}")

    report = run_local(config, "cfn-abort", cluster=local_cluster, on_start=abort_at_first_poll,
                       on_finish=cleanup)
    assert report.status == "ABORTED"
    assert seen["before"]["stacks"] == ["cfncluster-cfn-abort"]   # the abort left it running
    released = seen["result"]["released"]
    assert [(r["cluster"], r["removed"]) for r in released] == [("cfn-abort", True)], released
    assert seen["kept"] == b"halfway\n" and seen["folder"] is False
    assert seen["result"]["clusters"][0]["name"] == "cfn-abort"
    assert seen["after"] == NOTHING


def test_an_abort_cleanup_whose_release_fails_still_deletes_everything(local_cluster, write_config, head_node):
    """Keeping the results first is best effort: a Release Head Node that fails (here: a
    function error) is reported in the cleanup's answer, and the cluster is deleted anyway."""
    from handlers import cluster

    config = write_config("sequential", {"a": "sleep 60"})
    seen = {}

    def abort_then_break_release(endpoint):
        abort_at_first_poll(endpoint)
        stop = endpoint.fault

        def fault(name, event):
            if name == "ReleaseHeadNodeFunction":
                raise RuntimeError("release broke")
            stop(name, event)
        endpoint.fault = fault

    def cleanup(report):
        seen["result"] = cluster.handler(cleanup_event(report.execution_arn), None)
        seen["after"] = leftovers()

    report = run_local(config, "cfn-abort-2", cluster=local_cluster, on_start=abort_then_break_release,
                       on_finish=cleanup)
    # (in AWS the cluster's deletion ends the job; the local head node stays: end it here)
    from stepcluster.jobscripts import submission_name

    execution = report.execution_arn.rsplit(":", 1)[-1]
    head_node.run(["scancel", "--name", submission_name(execution, "a")], check=False)
    head_node.run(["bash", "-c", f"rm -rf -- ~/stepcluster-runs/{execution}"])
    assert report.status == "ABORTED"
    assert seen["result"]["released"] == [{"cluster": "cfn-abort-2", "error": "release broke"}]
    assert seen["after"] == NOTHING
