"""The shipped definition, in moto's interpreter, driving real jobs on the local Slurm and Grid
Engine over real SSH. Every test checks what a user would see: the execution's status and
cause, each job's state and exit code, and what was left on the head node."""

import functools
import json
import shlex

import pytest

from stepcluster.local import runner
from stepcluster.schedulers import Category, CommandOutput, get_scheduler

from .conftest import cleanup_event, crash_polling, remote_exists

pytestmark = pytest.mark.e2e
# A run that cannot finish (a scheduler down, say) is stopped instead of hanging the suite.
run_local = functools.partial(runner.run_local, timeout=150)
SCHEDULERS = ["slurm", "sge"]


def jobs_by_name(report):
    return {job["name"]: job for job in report.jobs}


def run_records(report):
    """Every run record the execution's states passed on (from its history)."""
    for event in report.events:
        details = event.get("stateExitedEventDetails") or {}
        run = json.loads(details.get("output") or "{}").get("run")
        if isinstance(run, dict) and "order" in run:
            yield run


def kept_its_jobs(report, records):
    """Each record after Create Cluster carried its jobs, or only where they are (a wide run)."""
    runs = list(run_records(report))
    assert runs
    if records == "in the bucket":
        return all("jobs_table" in r and "jobs" not in r for r in runs)
    return all("jobs" in r and "jobs_table" not in r for r in runs)


def run_dir_of(report):
    return f"/home/hpc/stepcluster-runs/{report.execution_arn.split(':')[-1]}"


def scheduler_view(head_node, scheduler_name, job_ids):
    """What the scheduler itself says about the jobs now."""
    scheduler = get_scheduler(scheduler_name)
    result = head_node.run_script(shlex.join(scheduler.status_argv(job_ids)), check=False)
    return scheduler.parse_status(CommandOutput(result.stdout, result.stderr, result.exit_code), job_ids)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_sequential_jobs_run_in_order_and_the_run_folder_is_removed(
        scheduler, local_cluster, write_config, head_node):
    config = write_config("sequential", {
        "first": "echo one > $STEPCLUSTER_OUTPUT/out.txt; sleep 1",
        "second": "echo two; sleep 1",
        "third": 'echo "$STEPCLUSTER_JOB_NAME in $STEPCLUSTER_EXECUTION"',
    })
    report = run_local(config, "seq-cluster", scheduler=scheduler, cluster=local_cluster)

    assert report.status == "SUCCEEDED", report.cause
    jobs = jobs_by_name(report)
    assert [j["state"] for j in report.jobs] == ["SUCCEEDED"] * 3
    assert all(j["exit_code"] == 0 and j["job_id"] for j in report.jobs)
    # One after the other: each starts no earlier than the previous one ended.
    assert jobs["first"]["ended"] <= jobs["second"]["started"]
    assert jobs["second"]["ended"] <= jobs["third"]["started"]
    # the first job by Submit Jobs; each next one by the poll that saw the previous succeed
    assert report.invocations["SubmitJobsFunction"] == 1
    assert report.invocations["ReleaseHeadNodeFunction"] == 1
    assert report.invocations["ClusterFunction"] == 2  # create, delete
    assert not remote_exists(head_node, run_dir_of(report))
    assert report.output["cluster"]["status"] == "RELEASED"


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_parallel_jobs_are_submitted_together_and_polled_together(
        scheduler, local_cluster, write_config):
    config = write_config("parallel", {f"p{i}": "sleep 2" for i in range(4)})
    report = run_local(config, "par-cluster", scheduler=scheduler, cluster=local_cluster)

    assert report.status == "SUCCEEDED", report.cause
    assert {j["state"] for j in report.jobs} == {"SUCCEEDED"}
    assert report.invocations["SubmitJobsFunction"] == 1  # all four in one submission
    polls = report.invocations["PollJobsFunction"]
    # Each polling round: one Lambda call and one SSH connection, however many jobs.
    # Beside the polls, one connection each to prepare the head node, submit, release it;
    # two more Lambda calls (create and delete the cluster) use no SSH.
    assert report.counts["ssh_connections"] == polls + 3
    assert report.counts["lambda_invocations"] == polls + 5
    # Everything overlapped: every job started before any ended.
    assert max(j["started"] for j in report.jobs) <= min(j["ended"] for j in report.jobs)


#: Where the run keeps its jobs' records: in its record, or (a run with more jobs than a record
#: carries, forced here with 3 jobs) in the artifacts bucket: the same run either way.
RECORDS = {"in the record": {}, "in the bucket": {"jobs_in_record": 0}}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("records", RECORDS)
def test_a_failing_sequential_job_stops_the_run_and_names_itself(
        scheduler, records, local_cluster, write_config, head_node):
    config = write_config("sequential", {
        "good": "echo fine",
        "bad": "echo 'cannot open input.dat' >&2; exit 3",
        "never": "echo should not run",
    })
    lines = []
    report = run_local(config, "fail-seq", scheduler=scheduler, cluster=local_cluster,
                       settings_overrides=RECORDS[records], progress=lines.append)
    assert kept_its_jobs(report, records)
    said = "\n".join(lines)
    assert "job good: SUCCEEDED" in said and "job bad: FAILED" in said and "exit code 3" in said

    assert report.status == "FAILED"
    assert report.error == "JobFailed"
    jobs = jobs_by_name(report)
    assert jobs["good"]["state"] == "SUCCEEDED"
    assert jobs["bad"]["state"] == "FAILED" and jobs["bad"]["exit_code"] == 3
    assert jobs["never"] == {"name": "never", "job_id": None, "state": "NOT_STARTED",
                             "exit_code": None, "started": None, "ended": None, "results": None}
    assert "'bad'" in report.cause and jobs["bad"]["job_id"] in report.cause
    assert "exit code 3" in report.cause and "cannot open input.dat" in report.cause
    assert report.invocations["SubmitJobsFunction"] == 1
    assert report.invocations["ReleaseHeadNodeFunction"] == 1
    assert not remote_exists(head_node, run_dir_of(report))


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("records", RECORDS)
def test_a_failing_parallel_job_cancels_the_others_on_the_scheduler(
        scheduler, records, local_cluster, write_config, head_node):
    config = write_config("parallel", {
        "crash": "sleep 1; echo 'segfault in solver' >&2; exit 139",
        "long1": "sleep 120",
        "long2": "sleep 120",
    })
    report = run_local(config, "fail-par", scheduler=scheduler, cluster=local_cluster,
                       settings_overrides=RECORDS[records])
    assert kept_its_jobs(report, records)

    assert report.status == "FAILED"
    jobs = jobs_by_name(report)
    assert jobs["crash"]["state"] == "FAILED"
    assert "'crash'" in report.cause and "segfault in solver" in report.cause
    assert jobs["long1"]["state"] == jobs["long2"]["state"] == "CANCELLED"
    ids = [jobs["long1"]["job_id"], jobs["long2"]["job_id"]]
    still_active = [s for s in scheduler_view(head_node, scheduler, ids).values()
                    if s.category in (Category.QUEUED, Category.RUNNING)]
    assert not still_active, still_active
    assert report.invocations["CancelJobsFunction"] == 1
    assert report.invocations["ReleaseHeadNodeFunction"] == 1


def test_each_job_is_polled_at_its_wait_time_the_smallest_while_several_run(
        local_cluster, write_config):
    """PollWindowSeconds=0: the seed's loop, a Wait state of wait_time between rounds."""
    config = write_config("parallel", {"quick": "sleep 1", "slow": "sleep 7"},
                          wait_times={"quick": 1, "slow": 3})
    report = run_local(config, "waits", cluster=local_cluster, settings_overrides={"poll_window_seconds": 0})

    assert report.status == "SUCCEEDED", report.cause
    waits = [json.loads(e["stateEnteredEventDetails"]["input"])["run"]["wait_seconds"]
             for e in report.events if e["type"] == "WaitStateEntered"
             and e["stateEnteredEventDetails"]["name"] == "Wait For Jobs"]
    assert waits[0] == 1          # both in flight: the smaller wait_time
    assert waits[-1] == 3         # only the slow job left: its own wait_time
    assert set(waits) == {1, 3}


@pytest.mark.parametrize("execution_input", [
    {}, {"cluster_name": ""}, {"cluster_name": "1starts-with-digit"},
    {"cluster_name": "has space"}, {"cluster_name": "x" * 61}, {"cluster_name": 42},
])
def test_a_bad_cluster_name_fails_fast_and_touches_nothing(execution_input, local_cluster, write_config):
    config = write_config("sequential", {"a": "true"})
    report = run_local(config, "unused", cluster=local_cluster, execution_input=execution_input)

    assert report.status == "FAILED"
    assert report.error == "InputError"
    assert "cluster_name" in report.cause
    assert report.counts["ssh_connections"] == 0
    assert report.invocations == {"ClusterFunction": 1}


@pytest.mark.parametrize("execution_input,says", [
    ([], "got an array"), ("demo", "got a string"), (7, "got a number"),   # (run_local reads None as "the default")
    ({"cluster_name": "c1", "keep_clsuter": True}, "did you mean 'keep_cluster'?"),
])
def test_an_input_that_is_not_the_documented_object_fails_with_what_it_must_be(
        execution_input, says, local_cluster, write_config):
    """Through the real definition: Start Run must not fail on it (States.Runtime) before
    Create Cluster can say what is wrong."""
    config = write_config("sequential", {"a": "true"})
    report = run_local(config, "unused", cluster=local_cluster, execution_input=execution_input)

    assert (report.status, report.error) == ("FAILED", "InputError")
    assert says in report.cause and "cluster_name" in report.cause
    assert report.invocations == {"ClusterFunction": 1} and report.counts["ssh_connections"] == 0


def test_a_lambda_error_mid_run_still_cancels_and_tears_down(local_cluster, write_config, head_node):
    config = write_config("parallel", {"busy": "sleep 120"})
    report = run_local(config, "crash", cluster=local_cluster, on_start=crash_polling)

    assert report.status == "FAILED"
    assert report.error == "RuntimeError"
    assert report.cause == "simulated crash in the poll function"    # the message, no JSON, no trace
    assert jobs_by_name(report)["busy"]["state"] == "CANCELLED"
    assert report.invocations["ReleaseHeadNodeFunction"] == 1
    assert report.invocations["ClusterFunction"] == 2
    assert not remote_exists(head_node, run_dir_of(report))


def test_a_transient_ssh_error_is_retried_and_the_run_succeeds(local_cluster, write_config):
    from stepcluster.errors import TransientSSHError

    config = write_config("sequential", {"a": "sleep 1"})
    failures = {"left": 1}

    def flaky(endpoint):
        def fault(name, event):
            if name == "PollJobsFunction" and failures["left"]:
                failures["left"] -= 1
                raise TransientSSHError("connection reset by peer (simulated)")
        endpoint.fault = fault

    report = run_local(config, "flaky", cluster=local_cluster, on_start=flaky)
    assert report.status == "SUCCEEDED", report.cause
    assert failures["left"] == 0


def test_a_handler_missing_from_its_s3_source_fails_before_submission(local_cluster, tmp_path):
    import boto3

    config = tmp_path / "jobs.ini"
    config.write_text("[order]\nsequential = fetch\n\n[job fetch]\nhandler = bin/run.sh\n"
                      "s3_uri = s3://job-sources/project\nwait_time = 1\n")

    def upload(endpoint):
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="job-sources")
        s3.put_object(Bucket="job-sources", Key="project/bin/other.sh", Body=b"true\n")

    report = run_local(str(config), "s3miss", cluster=local_cluster, on_start=upload)
    assert report.status == "FAILED"
    assert "'bin/run.sh'" in report.cause and "s3://job-sources/project" in report.cause
    assert "bin/other.sh" in report.cause
    assert jobs_by_name(report)["fetch"]["job_id"] is None


def test_an_s3_prefix_is_staged_with_its_nested_folders(local_cluster, tmp_path):
    import boto3

    config = tmp_path / "jobs.ini"
    config.write_text("[order]\nsequential = nested\n\n[job nested]\nhandler = bin/run.sh\n"
                      "s3_uri = s3://job-sources/project/\nwait_time = 1\n")

    def upload(endpoint):
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="job-sources")
        s3.put_object(Bucket="job-sources", Key="project/bin/run.sh",
                      Body=b"#!/bin/bash\nset -e\ntest \"$(cat data/deep/er/value.txt)\" = 42\n")
        s3.put_object(Bucket="job-sources", Key="project/data/deep/er/value.txt", Body=b"42\n")
        s3.put_object(Bucket="job-sources", Key="elsewhere/ignored.txt", Body=b"no\n")

    report = run_local(str(config), "s3ok", cluster=local_cluster, on_start=upload)
    assert report.status == "SUCCEEDED", report.cause


def test_a_head_node_with_another_host_key_is_refused(local_cluster, write_config):
    config = write_config("sequential", {"a": "true"})
    report = run_local(config, "mitm", cluster=local_cluster,
                       settings_overrides={"head_node_host_key": "SHA256:" + "A" * 43})
    assert report.status == "FAILED"
    assert report.error == "HostKeyError"
    assert "refusing to connect" in report.cause
    assert report.invocations["PrepareHeadNodeFunction"] == 1  # never retried
    assert "SubmitJobsFunction" not in report.invocations


def test_a_head_node_without_the_scheduler_fails_before_any_job(local_cluster, write_config):
    config = write_config("sequential", {"a": "true"})
    report = run_local(config, "no-torque", cluster=local_cluster,
                       settings_overrides={"scheduler": "torque"})
    assert report.status == "FAILED"
    assert "torque does not answer on this head node" in report.cause
    assert "SubmitJobsFunction" not in report.invocations
    assert report.invocations["ClusterFunction"] == 2  # created, then deleted


def test_an_aborted_run_on_an_existing_head_node_is_released_by_the_cleanup(
        local_cluster, write_config, head_node):
    """Abort skips the teardown states; the EventBridge cleanup cancels the run's jobs, keeps
    the results of what ran (it has no run record: it reads the run's folder) and removes the
    folder (the head node itself stays). Before, it kept nothing, not even a finished job's.

    The cleanup runs here once the execution has ended, so its rounds look once
    (PollWindowSeconds=0): a watching round would wait for `long` in the stopped execution. In
    AWS the rule's cleanup runs meanwhile, and ends that round (test_interrupt.py does so)."""
    import boto3

    from handlers import cluster

    config = write_config("parallel", {"long": "sleep 120", "quick": 'echo kept > "$STEPCLUSTER_OUTPUT/x"'},
                          wait_time=1)
    seen = {}

    def abort_once_quick_has_ended(endpoint):
        def fault(name, event):
            if name == "PollJobsFunction" and event["jobs"].get("quick", {}).get("state") == "SUCCEEDED":
                boto3.client("stepfunctions").stop_execution(executionArn=event["execution_arn"])
        endpoint.fault = fault

    def cleanup(report):
        seen["job_id"] = jobs_by_name(report)["long"]["job_id"]
        seen["result"] = cluster.handler(cleanup_event(report.execution_arn), None)
        s3, prefix = boto3.client("s3"), report.execution_arn.split(":")[-1]
        seen["manifest"] = json.loads(s3.get_object(Bucket=runner.ARTIFACTS_BUCKET,
                                                    Key=f"{prefix}/manifest.json")["Body"].read())
        seen["x"] = s3.get_object(Bucket=runner.ARTIFACTS_BUCKET, Key=f"{prefix}/quick/output/x")["Body"].read()

    report = run_local(config, "abort", cluster=local_cluster, on_start=abort_once_quick_has_ended,
                       on_finish=cleanup, settings_overrides={"poll_window_seconds": 0})
    assert report.status == "ABORTED"
    assert seen["result"]["released"] == {"run_dir": run_dir_of(report), "removed": True}
    assert not remote_exists(head_node, run_dir_of(report))
    status = scheduler_view(head_node, "slurm", [seen["job_id"]])[seen["job_id"]]
    assert status.category not in (Category.QUEUED, Category.RUNNING)
    jobs = seen["manifest"]["jobs"]
    assert (jobs["quick"]["state"], jobs["quick"]["exit_code"]) == ("SUCCEEDED", 0) and seen["x"] == b"kept\n"
    assert jobs["long"]["state"] == "CANCELLED" and jobs["long"]["job_id"] == seen["job_id"]


@pytest.mark.parametrize("scheduler, adapter, hold_flag", [
    ("slurm", "stepcluster.schedulers.slurm.Slurm", "--hold"),
    ("sge", "stepcluster.schedulers.sge.SGE", "-h"),
])
def test_a_held_job_fails_the_run_after_the_blocked_timeout(
        scheduler, adapter, hold_flag, local_cluster, write_config, head_node, monkeypatch):
    """A job that cannot start by itself ends the run with the scheduler's reason instead of
    being polled for ever, and is cancelled. Here it is held from its submission (sbatch
    --hold, qsub -h): what an operator's hold looks like to the run."""
    import importlib

    module, _, name = adapter.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    original = cls.submit_argv

    def submit_held(self, *args, **kwargs):
        argv = original(self, *args, **kwargs)
        return [argv[0], hold_flag, *argv[1:]]

    monkeypatch.setattr(cls, "submit_argv", submit_held)
    config = write_config("sequential", {"stuck": "sleep 1"})
    report = run_local(config, "held", scheduler=scheduler, cluster=local_cluster,
                       settings_overrides={"blocked_job_timeout_seconds": 3})
    assert report.status == "FAILED", report.cause
    assert "'stuck'" in report.cause and "cannot start by itself" in report.cause
    job_id = report.jobs[0]["job_id"]
    status = scheduler_view(head_node, scheduler, [job_id])[job_id]
    assert status.category not in (Category.QUEUED, Category.RUNNING)


@pytest.mark.parametrize("job_body, earlier_failure", [("exit 2", True), ("true", False)])
def test_a_cluster_that_cannot_be_deleted_fails_the_run_saying_so(
        job_body, earlier_failure, local_cluster, write_config):
    """DELETE_FAILED (as the backend reports it) ends the run as ClusterDeletionFailed; the
    cause says the cluster may still exist and keeps the job failure that came first."""
    config = write_config("sequential", {"job": job_body})

    def deletion_fails(endpoint):
        def after(name, event, result):
            if name == "ClusterFunction" and event.get("action") == "delete":
                return {**result, "cluster": {**result["cluster"], "status": "DELETE_FAILED",
                                              "reason": "DependencyViolation: sg-0abc is in use"}}
            return result
        endpoint.after = after

    report = run_local(config, "stuck", cluster=local_cluster, on_start=deletion_fails)
    assert report.status == "FAILED" and report.error == "ClusterDeletionFailed"
    assert "may still exist" in report.cause and "DependencyViolation" in report.cause
    assert ("The run had failed before that: JobFailed: Job 'job'" in report.cause) == earlier_failure


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_submit_that_dies_after_the_scheduler_accepted_the_job_is_retried_without_a_second_job(
        scheduler, local_cluster, write_config, head_node, monkeypatch):
    """The first Submit Jobs attempt dies after sbatch/qsub returned and before submit.rc is
    written (its script exits there; the function fails as when Lambda loses it); the
    definition's Retry runs Submit Jobs again: it finds the job by its name and adopts it."""
    from stepcluster import jobscripts
    from stepcluster.errors import RemoteCommandError, SchedulerError, TransientSSHError
    from stepcluster.headnode import HeadNodeWork

    original_script, original_submit = jobscripts.submit_script, HeadNodeWork.submit_jobs
    attempts = []

    def crashing_script(run_dir, submissions, **options):
        script = original_script(run_dir, submissions, **options)
        assert "; echo $? > " in script
        return script.replace("; echo $? > ", "; exit 1; echo $? > ", 1)

    def submit_jobs(self, run):
        attempts.append(run.execution)
        if len(attempts) > 1:
            return original_submit(self, run)
        monkeypatch.setattr(jobscripts, "submit_script", crashing_script)
        try:
            original_submit(self, run)
        except (SchedulerError, RemoteCommandError) as exc:    # the script's exit 1
            raise TransientSSHError(f"simulated: the function died mid-submit ({exc})") from None
        finally:
            monkeypatch.setattr(jobscripts, "submit_script", original_script)
        raise AssertionError("the crashing submit script did not crash")

    monkeypatch.setattr(HeadNodeWork, "submit_jobs", submit_jobs)
    config = write_config("sequential", {"once": "echo ran"})
    report = run_local(config, "resubmit", scheduler=scheduler, cluster=local_cluster)
    assert report.status == "SUCCEEDED", report.cause
    assert len(attempts) == 2
    job_id = jobs_by_name(report)["once"]["job_id"]
    name = jobscripts.submission_name(attempts[0], "once")
    adapter = get_scheduler(scheduler)
    found = head_node.run_script(shlex.join(adapter.recover_argv(name)), check=False)
    assert adapter.parse_recover(CommandOutput(found.stdout, found.stderr, found.exit_code), name) == [job_id]
    if scheduler == "slurm":     # the scheduler's own count: one job by that name, any state
        listed = head_node.run(["squeue", "-h", "-t", "all", "-n", name, "-o", "%i"]).stdout.split()
    else:                        # ended: one accounting record by that name
        listed = [line.split()[1] for line in head_node.run(["qacct", "-j", name]).stdout.splitlines()
                  if line.startswith("jobnumber")]
    assert listed == [job_id]


@pytest.mark.parametrize("function, says", [
    ("ReleaseHeadNodeFunction", "The jobs ran, but keeping their results or cleaning the head node failed: "
                                "simulated: the artifacts bucket refused the upload"),
    ("ClusterFunction", "The cluster may still exist: deleting it failed: "
                        "simulated: the artifacts bucket refused the upload"),
])
def test_a_teardown_error_is_quoted_by_its_message_not_lambdas_json(function, says, local_cluster, write_config):
    """Lambda hands a Catch its error as JSON with a stack trace; a cause quotes the message."""
    from stepcluster.errors import ClusterError

    config = write_config("sequential", {"job": "true"})

    def teardown_fails(endpoint):
        def fault(name, event):
            if name == function and (name != "ClusterFunction" or event.get("action") == "delete"):
                raise ClusterError("simulated: the artifacts bucket refused the upload")
        endpoint.fault = fault

    report = run_local(config, "teardown", cluster=local_cluster, on_start=teardown_fails)
    assert report.status == "FAILED"
    assert report.cause == says
    assert "stackTrace" not in report.cause and "errorType" not in report.cause


def test_run_local_takes_the_deployments_parameters(local_cluster, write_config, tmp_path, capsys):
    """`--parameter-overrides` as `sam deploy` takes them: here the run's folder on the head node."""
    from stepcluster import cli

    config = write_config("sequential", {"where": 'echo "$STEPCLUSTER_JOB_DIR"'})
    code = cli.main(["run-local", config, "--cluster-name", "params", "--json",
                     "--artifacts-dir", str(tmp_path / "kept"),
                     "--parameter-overrides", "RemoteWorkRoot=custom-runs/here", "ClusterPollSeconds=2"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    [stdout] = (tmp_path / "kept").glob("*/where/stdout")
    assert stdout.read_text().startswith("/home/hpc/custom-runs/here/")
