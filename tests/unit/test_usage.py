"""What a run used and cost (stepcluster usage.py): each task's Lambda call counted as Lambda
bills it, jobs' core-hours, the estimate that says what it priced and never guesses."""

from __future__ import annotations

import pytest

from stepcluster import usage
from stepcluster.errors import InputError
from stepcluster.resources import Resources

PRICES = {"lambda_gb_second": 0.0000166667, "lambda_request": 0.0000002, "state_transition": 0.000025,
          "instance_hour": {"c5.xlarge": 0.17}}


def test_a_task_adds_its_call_billed_to_the_millisecond_and_its_connections():
    used = usage.add_task(None, seconds=0.0004, memory_mb=512, ssh_connections=1)
    assert used == {"lambda_invocations": 1, "lambda_gb_seconds": 0.0005, "ssh_connections": 1}  # 1 ms at 0.5 GB
    used = usage.add_task(used, seconds=2.0, memory_mb=1024, ssh_connections=0)
    assert used == {"lambda_invocations": 2, "lambda_gb_seconds": 2.0005, "ssh_connections": 1}
    # no memory known (not on Lambda, no template size): the call is counted, its GB-s not guessed
    assert usage.add_task(None, seconds=1, memory_mb=None, ssh_connections=0) == {"lambda_invocations": 1}


def test_a_jobs_core_hours_are_its_elapsed_time_times_the_cores_it_asked_for():
    assert Resources(tasks=4, cpus_per_task=2).cores == 8 and Resources().cores == 1
    assert usage.job_usage("2026-12-06T10:00:00Z", "2026-12-06T10:30:00Z", 8) == {
        "elapsed_seconds": 1800, "core_hours": 4.0}
    assert usage.job_usage(None, "2026-12-06T10:30:00Z", 8) == {}
    assert usage.jobs_total({"a": {"elapsed_seconds": 1800, "core_hours": 4.0}, "b": {}}) == {
        "jobs_elapsed_seconds": 1800, "jobs_core_hours": 4.0}
    assert usage.cluster_lived(None, 1_000, 1_600) == {"cluster_seconds": 600}


def test_the_estimate_prices_what_it_can_and_says_what_it_could_not():
    used = {"lambda_invocations": 10, "lambda_gb_seconds": 100.0, "instance_hours": {"c5.xlarge": 2, "p4d.24xlarge": 1}}
    got = usage.estimate(used, PRICES, state_transitions=40)
    assert got["parts"] == {"lambda compute": 0.001667, "lambda requests": 0.000002, "state transitions": 0.001,
                            "c5.xlarge instances": 0.34}
    assert got["usd"] == round(0.00166667 + 0.000002 + 0.001 + 0.34, 6)
    assert got["not_priced"] == ["p4d.24xlarge instances"]
    # the record's own estimate has no transitions: it says so
    assert "state transitions (counted from the execution's history)" in usage.estimate(used, PRICES)["not_priced"]
    assert usage.estimate(used, None) == {"usd": None, "note": "no price table (template parameter PriceTable): no estimate"}


@pytest.mark.parametrize("text, says", [
    ("{", "not JSON"), ("[1]", "must be a JSON object"), ('{"lambda": 1}', "unknown keys lambda"),
    ('{"lambda_request": -1}', "lambda_request must be a price in USD"),
    ('{"instance_hour": {"c5": "cheap"}}', "instance_hour must be {INSTANCE_TYPE: USD}"),
])
def test_a_bad_price_table_is_named(text, says):
    with pytest.raises(InputError, match=None) as info:
        usage.parse_prices(text)
    assert says in str(info.value)
    assert usage.parse_prices("") is None and usage.parse_prices('{"state_transition": 0.000025}')


def test_instance_hours_run_from_launch_to_end_or_to_the_deletion():
    instances = [{"type": "c5.xlarge", "launched": 0, "ended": 3600}, {"type": "c5.xlarge", "launched": 1800, "ended": None},
                 {"type": "t3.small", "launched": 0, "ended": None}]
    used = usage.with_instances({"lambda_invocations": 3}, instances, now=7200)
    assert used["instance_hours"] == {"c5.xlarge": 2.5, "t3.small": 2.0} and used["lambda_invocations"] == 3
    assert usage.estimate(used, PRICES)["parts"]["c5.xlarge instances"] == 0.425
    assert "instance_hours" not in usage.with_instances({}, [], now=1)


def test_the_instances_carrying_the_runs_tag_are_found_with_when_they_ran(monkeypatch):
    import boto3
    from moto import mock_aws

    from stepcluster.clusters.base import EXECUTION_TAG, tagged_instances

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        ec2 = boto3.client("ec2")
        ours = "arn:aws:states:us-east-1:123456789012:execution:m:run-1"

        def launch(kind, execution):
            return ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType=kind, TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": EXECUTION_TAG, "Value": execution}]}])["Instances"][0]["InstanceId"]
        head, compute = launch("c5.large", ours), launch("c5.xlarge", ours)
        launch("c5.large", ours.replace("run-1", "run-2"))
        ec2.terminate_instances(InstanceIds=[compute])
        found = {i["id"]: i for i in tagged_instances(ec2, ours)}
        assert set(found) == {head, compute}
        assert found[head]["type"] == "c5.large" and found[head]["ended"] is None and found[head]["launched"] > 0
        assert found[compute]["ended"] is not None and found[compute]["ended"] >= found[compute]["launched"]
        assert tagged_instances(ec2, None) == []


def test_the_report_prints_what_the_run_used():
    from stepcluster.cli import _usage_line

    line = _usage_line({"lambda_invocations": 10, "lambda_gb_seconds": 4.53, "ssh_connections": 8,
                        "cluster_seconds": 812, "instance_hours": {"c5.large": 0.2256, "c5.xlarge": 0.5},
                        "jobs_elapsed_seconds": 5, "jobs_core_hours": 0.0014,
                        "estimate": {"usd": None, "note": "no price table (template parameter PriceTable): no estimate"}})
    assert line == ("10 Lambda calls (4.53 GB-s), 8 SSH connections, cluster 812 s, instances c5.large 0.2256 h, "
                    "c5.xlarge 0.5 h, jobs 5 s, 0.0014 core-hours, no estimate (no price table (template parameter "
                    "PriceTable): no estimate)")
