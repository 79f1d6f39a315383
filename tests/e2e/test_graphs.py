"""Workflows beyond a line or a fan, on the real local Slurm and Grid Engine: dependencies
(`depends_on`), what a failure does to the rest (`on_failure`), retries, and resuming a failed
run. The start and end times the wrappers record, and the scheduler's job ids, prove the order."""

import functools
import json
import uuid
from pathlib import Path

import pytest

from stepcluster.local import runner

pytestmark = pytest.mark.e2e
run_local = functools.partial(runner.run_local, timeout=240)


def jobs_by_name(report):
    return {job["name"]: job for job in report.jobs}


def with_keys(path: str, extra: dict[str, str], order_options: str = "") -> str:
    """The config at `path` with more keys in some [job NAME] sections (and in [order])."""
    text = Path(path).read_text()
    for name, keys in extra.items():
        text = text.replace(f"[job {name}]\n", f"[job {name}]\n{keys}\n")
    if order_options:
        text = text.replace("[order]\n", f"[order]\n{order_options}\n", 1)
    Path(path).write_text(text)
    return path


@pytest.mark.parametrize("scheduler", ["slurm", "sge"])
def test_a_diamond_runs_each_job_once_the_jobs_it_waits_for_succeeded(scheduler, local_cluster, write_config):
    config = with_keys(write_config("parallel", {
        "a": "sleep 2; echo a > $STEPCLUSTER_OUTPUT/a.txt",
        "b": "sleep 1", "c": "sleep 2", "d": "echo d"}),
        {"b": "depends_on = a", "c": "depends_on = a", "d": "depends_on = b, c"})
    report = run_local(config, "diamond", scheduler=scheduler, cluster=local_cluster)

    assert report.status == "SUCCEEDED", report.cause
    jobs = jobs_by_name(report)
    assert jobs["a"]["ended"] <= min(jobs["b"]["started"], jobs["c"]["started"])
    assert max(jobs["b"]["ended"], jobs["c"]["ended"]) <= jobs["d"]["started"]
    assert max(jobs["b"]["started"], jobs["c"]["started"]) < jobs["c"]["ended"]       # b and c together
    # each wave went out from the round that saw its prerequisites end: one Submit Jobs in all
    assert report.invocations["SubmitJobsFunction"] == 1


@pytest.mark.parametrize("on_failure", ["cancel", "finish"])
def test_a_failed_job_leaves_what_waits_for_it_not_started(on_failure, local_cluster, write_config):
    config = with_keys(write_config("parallel", {
        "a": "echo a", "b": "echo 'b cannot go on' >&2; exit 3",
        "c": "sleep 60" if on_failure == "cancel" else "sleep 4", "d": "echo d"}),
        {"b": "depends_on = a", "c": "depends_on = a", "d": "depends_on = b, c"},
        order_options=f"on_failure = {on_failure}")
    report = run_local(config, "failed-branch", cluster=local_cluster)

    assert (report.status, report.error) == ("FAILED", "JobFailed")
    jobs = jobs_by_name(report)
    assert jobs["b"]["state"] == "FAILED" and jobs["d"]["state"] == "NOT_STARTED" and jobs["d"]["job_id"] is None
    assert "b cannot go on" in report.cause
    if on_failure == "cancel":
        assert jobs["c"]["state"] == "CANCELLED"
        assert report.cause.startswith("Job 'b'")
    else:
        assert jobs["c"]["state"] == "SUCCEEDED" and jobs["c"]["ended"] >= jobs["b"]["ended"]
        assert report.cause.startswith("Job 'b' failed; the jobs that did not wait for it ran to their end "
                                       "([order] on_failure = finish), and job 'd' that did never started.")


def test_a_job_that_fails_once_with_137_succeeds_on_its_retry_with_both_attempts_kept(
        local_cluster, write_config, tmp_path):
    config = with_keys(write_config("sequential", {
        "flaky": 'if [ ! -e .failed-once ]; then touch .failed-once; echo first; echo "node lost" >&2; '
                 'exit 137; fi; echo second > $STEPCLUSTER_OUTPUT/out.txt; echo second',
        "after": "echo after"}),
        {"flaky": "retries = 1\nretry_on = 137"})
    lines = []
    results = tmp_path / "results"
    report = run_local(config, "retried", cluster=local_cluster, artifacts_dir=results, progress=lines.append)

    assert report.status == "SUCCEEDED", report.cause
    jobs = jobs_by_name(report)
    assert jobs["flaky"]["attempts"] == 2 and jobs["after"]["state"] == "SUCCEEDED"
    execution = report.execution_arn.rsplit(":", 1)[-1]
    kept = results / execution / "flaky"
    assert (kept / "attempt-1" / "stdout").read_text() == "first\n"
    assert (kept / "attempt-1" / "stderr").read_text() == "node lost\n"
    assert (kept / "attempt-1" / "exit_code").read_text().split()[:2] in (["137", "0"], ["137", "9"])
    assert (kept / "stdout").read_text() == "second\n" and (kept / "output" / "out.txt").exists()
    manifest = json.loads((results / execution / "manifest.json").read_text())
    first = manifest["jobs"]["flaky"]["attempts"][0]
    assert first["attempt"] == 1 and first["job_id"] != jobs["flaky"]["job_id"]
    assert any("job flaky: PENDING" in line and "attempt 2" in line for line in lines), lines


def test_a_resumed_run_runs_only_what_the_failed_one_did_not_finish(local_cluster, write_config, tmp_path):
    # where the rig's jobs (its own user) see it: the first run's report fails while it is there
    mark = Path("/tmp") / f"stepcluster-e2e-fail-{uuid.uuid4().hex[:8]}"
    mark.write_text("")
    config = with_keys(write_config("parallel", {
        "prepare": "echo prepared > $STEPCLUSTER_OUTPUT/prepared.txt",
        "simulate": "echo simulated > $STEPCLUSTER_OUTPUT/simulated.txt",
        "report": f"if [ -e {mark} ]; then echo 'license server down' >&2; exit 5; fi; "
                  "echo reported > $STEPCLUSTER_OUTPUT/report.txt"}),
        {"simulate": "depends_on = prepare", "report": "depends_on = simulate"})
    results = tmp_path / "results"
    first = run_local(config, "first", cluster=local_cluster, artifacts_dir=results)
    assert (first.status, first.error) == ("FAILED", "JobFailed") and "license server down" in first.cause
    earlier = first.execution_arn.rsplit(":", 1)[-1]

    mark.unlink()          # the license server is back
    second = run_local(config, "second", cluster=local_cluster, artifacts_dir=results, resume=earlier)

    assert second.status == "SUCCEEDED", second.cause
    before, after = jobs_by_name(first), jobs_by_name(second)
    # the finished jobs are the earlier run's (same scheduler ids, same times), only report ran
    for name in ("prepare", "simulate"):
        assert after[name]["resumed_from"] == earlier
        assert (after[name]["job_id"], after[name]["started"]) == (before[name]["job_id"], before[name]["started"])
    assert after["report"]["job_id"] != before["report"]["job_id"]
    assert after["report"]["started"] >= before["report"]["ended"]
    assert second.invocations["SubmitJobsFunction"] == 1
    # the final results hold every job's outputs: the resumed ones where the earlier run kept them
    execution = second.execution_arn.rsplit(":", 1)[-1]
    manifest = json.loads((results / execution / "manifest.json").read_text())
    for name in ("prepare", "simulate"):
        location = manifest["jobs"][name]["results"]
        assert location == f"s3://{runner.ARTIFACTS_BUCKET}/{earlier}/{name}/"
        assert (results / earlier / name / "output" / f"{name}d.txt").read_text() == f"{name}d\n"
    assert (results / execution / "report" / "output" / "report.txt").read_text() == "reported\n"


def test_resuming_an_execution_this_stack_never_ran_fails_at_once(local_cluster, write_config, tmp_path):
    config = write_config("sequential", {"a": "echo a"})
    report = run_local(config, "nothing", cluster=local_cluster, artifacts_dir=tmp_path, resume="no-such-run")
    assert (report.status, report.error) == ("FAILED", "InputError")
    assert "this stack has no execution 'no-such-run'" in report.cause
    assert "SubmitJobsFunction" not in report.invocations and "PrepareHeadNodeFunction" not in report.invocations


def test_a_resumed_run_runs_an_s3_job_again_once_its_objects_changed(local_cluster, tmp_path):
    mark = Path("/tmp") / f"stepcluster-e2e-fail-{uuid.uuid4().hex[:8]}"
    mark.write_text("")
    inputs = tmp_path / "s3" / "inputs" / "prep"
    inputs.mkdir(parents=True)
    (inputs / "run.sh").write_text("cp data.txt $STEPCLUSTER_OUTPUT/seen.txt\n")
    (inputs / "data.txt").write_text("v1\n")
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "report.sh").write_text(f"if [ -e {mark} ]; then exit 5; fi\n")
    config = tmp_path / "jobs.ini"
    config.write_text("[order]\nparallel = prepare, report\n\n"
                      "[job prepare]\nhandler = run.sh\ns3_uri = s3://inputs/prep/\nwait_time = 1\n\n"
                      "[job report]\nhandler = report.sh\nlocal_path = local\nwait_time = 1\ndepends_on = prepare\n")
    results = tmp_path / "results"
    run = functools.partial(run_local, str(config), cluster=local_cluster, s3_dir=tmp_path / "s3",
                            artifacts_dir=results)

    first = run("first")
    assert (first.status, jobs_by_name(first)["prepare"]["state"]) == ("FAILED", "SUCCEEDED")
    first_name = first.execution_arn.rsplit(":", 1)[-1]
    same = run("same", resume=first_name)                   # the objects as they were: spared
    assert jobs_by_name(same)["prepare"]["resumed_from"] == first_name
    assert jobs_by_name(same)["prepare"]["job_id"] == jobs_by_name(first)["prepare"]["job_id"]

    (inputs / "data.txt").write_text("v2\n")                # new data under the same address
    mark.unlink()
    changed = run("changed", resume=same.execution_arn.rsplit(":", 1)[-1])
    assert changed.status == "SUCCEEDED", changed.cause
    prepare = jobs_by_name(changed)["prepare"]
    assert not prepare.get("resumed_from") and prepare["job_id"] != jobs_by_name(first)["prepare"]["job_id"]
    execution = changed.execution_arn.rsplit(":", 1)[-1]
    assert (results / execution / "prepare" / "output" / "seen.txt").read_text() == "v2\n"


@pytest.mark.parametrize("on_failure", ["cancel", "finish"])
def test_a_job_the_scheduler_refuses_or_that_cannot_be_staged_fails_alone_when_the_run_finishes(
        on_failure, local_cluster, write_config, tmp_path):
    # b: Slurm refuses it (no such partition); d: its files are not in S3; c waits for b
    config = with_keys(write_config("parallel", {
        "a": "sleep 2; echo a > $STEPCLUSTER_OUTPUT/a.txt", "b": "echo b", "c": "echo c", "d": "echo d"}),
        {"b": "queue = no-such-partition", "c": "depends_on = b"},
        order_options=f"on_failure = {on_failure}")
    text = Path(config).read_text()
    start = text.index("[job d]")
    end = text.find("\n[job ", start + 1)
    section = text[start:] if end < 0 else text[start:end]
    Path(config).write_text(text.replace(section, "[job d]\nhandler = run.sh\ns3_uri = s3://inputs/nothing-here/\n"
                                                  "wait_time = 1\n\n"))
    (tmp_path / "s3" / "inputs").mkdir(parents=True)
    report = run_local(config, f"refused-{on_failure}", cluster=local_cluster, s3_dir=tmp_path / "s3")

    jobs = jobs_by_name(report)
    assert (report.status, report.error) == ("FAILED", "JobFailed")
    if on_failure == "cancel":       # the seed's rule: the first job that cannot go fails the run
        assert report.cause.startswith("Job ")
        assert "failed before submission" in report.cause
        return
    assert jobs["a"]["state"] == "SUCCEEDED" and jobs["a"]["job_id"]        # ran to its end
    assert (jobs["b"]["state"], jobs["b"]["job_id"]) == ("FAILED", None)
    assert (jobs["d"]["state"], jobs["d"]["job_id"]) == ("FAILED", None)
    assert jobs["c"]["state"] == "NOT_STARTED"
    assert report.cause.startswith("Jobs 'b', 'd' failed; the jobs that did not wait for them ran to their "
                                   "end ([order] on_failure = finish), and job 'c' that did never started.")
    assert "Job 'b' failed before submission: slurm refused the job (exit 1)" in report.cause
    assert "Job 'd' failed before submission: nothing found at s3://inputs/nothing-here/" in report.cause
