"""The user's side of a run, on the real local Slurm: following a run started through a stack's
outputs as run-local does, and a run's own budget."""

import json
import re

import pytest

from stepcluster import cli
from stepcluster.local import runner
from stepcluster.tools import client

from .conftest import remote_exists

pytestmark = pytest.mark.e2e


def job_lines(lines):
    """The progress lines about jobs, without their times and scheduler ids."""
    return [re.sub(r" \(job \d+\)", "", line.split("] ", 1)[1]).strip() for line in lines if "  job " in line]


def test_start_follow_prints_the_same_progress_and_report_as_run_local(local_cluster, write_config, capsys):
    """`stepcluster start --stack --follow` through the embedded stack's outputs, beside a
    run-local of the same workflow: one code path, the same lines and the same report."""
    config = write_config("sequential", {"a": "echo a", "b": "exit 3"})
    seen = {}

    def start_through_the_stack(endpoint):
        seen["exit"] = cli.main(["start", "--stack", runner.LOCAL_STACK, "--region", runner.REGION,
                                 "--cluster-name", "via-start", "--follow", "--json"])
        seen["out"] = capsys.readouterr()
    lines = []
    report = runner.run_local(config, "via-run-local", cluster=local_cluster, on_start=start_through_the_stack,
                              progress=lines.append, timeout=150)

    started = json.loads(seen["out"].out)
    assert seen["exit"] == 1 and started["status"] == report.status == "FAILED"
    assert started["error"] == report.error == "JobFailed"
    assert [(j["name"], j["state"], j["exit_code"]) for j in started["jobs"]] == \
        [(j["name"], j["state"], j["exit_code"]) for j in report.jobs] == [("a", "SUCCEEDED", 0), ("b", "FAILED", 3)]
    followed = seen["out"].err.splitlines()
    assert followed[0].startswith("execution ") and "console.aws.amazon.com/states/home" in followed[0]
    # the same lines (a start is reported or not as the rounds fall: the ends always are)
    ends = [line for line in job_lines(lines) if "PENDING" not in line and "RUNNING" not in line]
    assert ends == ["job a: SUCCEEDED, exit code 0", "job b: FAILED, exit code 3"]
    assert [line for line in job_lines(followed) if line in ends] == ends
    assert set(job_lines(followed)) <= {"job a: PENDING", "job a: RUNNING", "job b: PENDING", "job b: RUNNING", *ends}
    # the counts, from each execution's own history (the rounds may fall differently)
    assert set(started["counts"]) == set(client.history_counts(report.events)) and all(started["counts"].values())
    assert report.counts["history_events"] == len(report.events)


def test_a_run_past_its_budget_stops_its_jobs_keeps_their_results_and_says_so(
        local_cluster, write_config, tmp_path, head_node):
    config = write_config("parallel", {"long": "echo started; sleep 300"})
    report = runner.run_local(config, "budget", cluster=local_cluster, max_hours=0.01,       # 36 s
                              artifacts_dir=tmp_path, timeout=150)

    assert (report.status, report.error) == ("FAILED", "BudgetReached")
    assert report.cause.startswith("The run reached its budget (max_hours = 0.01, given when it was started")
    assert "'long'" in report.cause and "are cancelled, their results so far kept" in report.cause
    (job,) = report.jobs
    assert job["state"] == "CANCELLED" and job["started"]
    execution = report.execution_arn.rsplit(":", 1)[-1]
    assert (tmp_path / execution / "long" / "stdout").read_text() == "started\n"
    assert not remote_exists(head_node, f"stepcluster-runs/{execution}")
    assert report.invocations["ReleaseHeadNodeFunction"] == 1


def test_a_runs_usage_is_counted_where_it_happens_and_priced_only_with_a_price_table(local_cluster, tmp_path):
    """The example on the local Slurm: each call counted at the template's memory, the SSH
    connections, the cluster's life, the jobs' core-hours; an estimate only with PriceTable."""
    report = runner.run_local("examples/jobs.ini", "usage", cluster=local_cluster, artifacts_dir=tmp_path, timeout=150)
    assert report.status == "SUCCEEDED", report.cause
    used = report.usage
    assert used["lambda_invocations"] == report.counts["lambda_invocations"]
    assert used["ssh_connections"] == report.counts["ssh_connections"]
    assert used["state_transitions"] == report.counts["state_transitions"]
    assert 0 < used["lambda_gb_seconds"] < 60 and used["cluster_seconds"] >= used["jobs_elapsed_seconds"] > 0
    assert used["jobs_core_hours"] > 0 and used["estimate"]["usd"] is None
    manifest = json.loads((tmp_path / report.execution_arn.rsplit(":", 1)[-1] / "manifest.json").read_text())
    assert manifest["jobs"]["simulate"]["usage"]["elapsed_seconds"] >= 4          # it sleeps five seconds
    assert manifest["usage"]["jobs_core_hours"] == used["jobs_core_hours"]

    prices = {"lambda_gb_second": 0.0000166667, "lambda_request": 0.0000002, "state_transition": 0.000025}
    priced = runner.run_local("examples/jobs.ini", "usage-priced", cluster=local_cluster, timeout=150,
                              settings_overrides={"price_table": json.dumps(prices)})
    estimate = priced.usage["estimate"]
    assert estimate["parts"]["state transitions"] == round(priced.counts["state_transitions"] * 0.000025, 6)
    assert estimate["usd"] > 0 and "not_priced" not in estimate
