"""The run record's JSON shape: what the definition's paths and the console read."""

import json

import pytest

from stepcluster.definition import read_definition
from stepcluster.errors import InputError
from stepcluster.record import ClusterRecord, ClusterStatus, JobRecord, JobState, Phase, Run

CREATED = {
    "execution": "exec-1", "execution_arn": "arn:aws:states:us-east-1:1:execution:sm:exec-1",
    "plan_digest": "d1", "cluster_name": "c1", "keep_cluster": False, "order": "sequential",
    "next": 1, "phase": "RUNNING", "wait_seconds": 10, "polls": 3,
    "cluster": {"backend": "cfncluster", "stack_id": "s", "status": "READY", "poll_seconds": 30,
                "head_node": {"host": "h", "port": 22, "user": "u", "scheduler": "slurm", "host_key": "k"},
                "key": {"key_name": "k1", "secret_arn": "arn:s", "owned": True}, "run_dir": "/r"},
    "jobs": {"a": {"state": "SUCCEEDED", "job_id": "12", "exit_code": 0, "started": "t0", "ended": "t1"},
             "b": {"state": "PENDING", "job_id": "13", "scheduler_state": "PD", "reason": "Priority",
                   "blocked_since": 5}},
}


def test_a_record_reads_and_writes_back_the_same_json():
    run = Run.from_dict(json.loads(json.dumps(CREATED)))
    assert run.to_dict() == CREATED
    assert run.phase is Phase.RUNNING and run.jobs["a"].state is JobState.SUCCEEDED
    assert run.cluster.scheduler == "slurm" and run.cluster.secret_arn == "arn:s" and run.run_dir == "/r"
    assert run.cluster.details == {"backend": "cfncluster", "stack_id": "s", "poll_seconds": 30}
    assert json.loads(json.dumps(run.to_dict())) == CREATED       # plain JSON: enums as their words


def test_empty_fields_are_left_out():
    job = JobRecord(JobState.FAILED, "7", exit_code=0, reason=None)
    assert job.to_dict() == {"state": "FAILED", "job_id": "7", "exit_code": 0}
    assert JobRecord().to_dict() == {"state": "NOT_STARTED"}


def test_the_record_start_run_makes_keeps_its_shape():
    """Before Create Cluster: no jobs, no cluster; after a failed create's teardown: a cluster."""
    early = {"input": {"cluster_name": "c1"}, "execution": "e", "execution_arn": "arn", "plan_digest": "d"}
    assert Run.from_dict(early).to_dict() == early
    torn_down = Run.from_dict({**early, "cluster": {"status": "DELETED"}})
    assert torn_down.to_dict() == {**early, "cluster": {"status": "DELETED"}}


def test_a_created_run_without_jobs_still_lists_them():
    run = Run(execution="e", order="parallel")
    assert run.to_dict() == {"execution": "e", "keep_cluster": False, "order": "parallel", "next": 0, "jobs": {}}


@pytest.mark.parametrize("data, words", [
    ("run", "not a run record"),
    ({"cluster_name": "c"}, "not a run record"),
    ({**CREATED, "keep_clsuter": True}, "keep_clsuter"),
    ({**CREATED, "phase": "DONE"}, "the run's phase is 'DONE', not one of READY, RUNNING, WATCHING, NEXT"),
    ({**CREATED, "jobs": {"a": {"state": "FINISHED"}}}, "job 'a''s state is 'FINISHED'"),
    ({**CREATED, "jobs": {"a": {"state": "PENDING", "jobid": "1"}}}, "job 'a' has fields this version does not know: jobid"),
    ({**CREATED, "jobs": {"a": "PENDING"}}, "job 'a' of the run record is not an object"),
    ({**CREATED, "jobs": ["a"]}, "jobs are not an object"),
    ({**CREATED, "cluster": {"name": "x"}}, "cluster has no status"),
])
def test_a_record_that_is_not_one_is_refused_naming_the_field(data, words):
    with pytest.raises(InputError) as err:
        Run.from_dict(data)
    assert words in str(err.value)


def test_a_copy_changes_apart_from_its_original():
    run = Run.from_dict(CREATED)
    copy = run.copy()
    copy.jobs["a"] = copy.jobs["a"].but(state=JobState.FAILED)
    copy.cluster.run_dir = "/other"
    copy.jobs["c"] = JobRecord()
    assert run.to_dict() == CREATED


def test_job_states_and_phases_are_the_words_the_definition_branches_on():
    assert [s.value for s in JobState] == ["NOT_STARTED", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
    assert [s.name for s in JobState if s.active] == ["PENDING", "RUNNING"]
    assert [s.name for s in JobState if s.ended] == ["SUCCEEDED", "FAILED", "CANCELLED"]
    assert [p.value for p in Phase] == ["READY", "RUNNING", "WATCHING", "NEXT", "SUCCEEDED", "FAILED"]
    definition = json.loads(read_definition())
    read = {c["StringEquals"] for s in definition["States"].values() for c in s.get("Choices", [])
            if c.get("Variable") == "$.run.phase"}
    assert read <= {p.value for p in Phase}
    statuses = {c["StringEquals"] for s in definition["States"].values() for c in s.get("Choices", [])
                if c.get("Variable") == "$.run.cluster.status"}
    assert statuses <= {c.value for c in ClusterStatus}


def test_active_jobs_in_record_order():
    run = Run.from_dict(CREATED)
    run.jobs["c"] = JobRecord(JobState.RUNNING, "14")
    assert run.active_jobs() == ["b", "c"]
    assert ClusterRecord("READY").ready and not ClusterRecord("CREATING").ready
    assert ClusterRecord("READY").scheduler is None and ClusterRecord("READY").secret_arn is None


def test_what_to_dict_gives_is_plain_json_types():
    out = Run.from_dict(CREATED).to_dict()
    assert type(out["phase"]) is str and type(out["jobs"]["a"]["state"]) is str


def test_a_job_without_a_state_has_not_started():
    assert Run.from_dict({**CREATED, "jobs": {"a": {}}}).jobs["a"].state is JobState.NOT_STARTED


def test_a_removed_run_folder_is_remembered():
    data = {**CREATED, "cluster": {**CREATED["cluster"], "run_dir_removed": True}}
    assert Run.from_dict(data).to_dict() == data


def test_refusals_say_where_and_show_what_came():
    with pytest.raises(InputError) as err:
        Run.from_dict({**CREATED, "zeta": 1, "alpha": 2})
    assert str(err.value) == ("the run record's top level has fields this version does not know: "
                              "alpha, zeta (was it made by another deployment?)")
    with pytest.raises(InputError) as err:
        Run.from_dict(["x" * 300])
    assert str(err.value) == "not a run record (no execution name): " + str(["x" * 300])[:200]


def test_counts_and_changes_say_what_a_task_did_in_a_few_lines():
    before = Run("e", order="parallel", jobs={n: JobRecord() for n in ("a", "b", "c")})
    after = before.copy()
    after.jobs["a"] = JobRecord(state=JobState.SUCCEEDED, job_id="1", exit_code=0)
    after.jobs["b"] = JobRecord(state=JobState.NOT_STARTED, reason="same state: no change")
    after = after.with_changes_since(before)
    assert after.changes == [{"job": "a", "state": "SUCCEEDED", "job_id": "1", "exit_code": 0}]
    assert after.changes_more is None and after.job_counts() == {"NOT_STARTED": 2, "SUCCEEDED": 1}
    # a job the record before did not list was not started
    assert after.with_changes_since(Run("e", order="parallel")).changes == after.changes


def test_changes_list_the_first_few_and_count_the_rest():
    from stepcluster.record import CHANGES_IN_RECORD

    names = [f"j{i}" for i in range(CHANGES_IN_RECORD + 7)]
    before = Run("e", order="parallel", jobs={n: JobRecord() for n in names})
    after = before.copy()
    for n in names:
        after.jobs[n] = JobRecord(state=JobState.PENDING, job_id=n)
    after = after.with_changes_since(before)
    assert [c["job"] for c in after.changes] == names[:CHANGES_IN_RECORD] and after.changes_more == 7
    assert "changes" not in after.with_changes_since(after).to_dict()       # the next task's own


def test_a_wide_record_carries_its_table_and_no_jobs():
    run = Run.from_dict({"execution": "e", "order": "parallel", "jobs_table": {"shards": {}, "counts": {"NOT_STARTED": 5}}})
    assert run.jobs == {} and "jobs" not in run.to_dict() and run.to_dict()["jobs_table"]["counts"] == {"NOT_STARTED": 5}
    with pytest.raises(InputError, match="jobs_table is not an object"):
        Run.from_dict({"execution": "e", "jobs_table": ["x"]})
