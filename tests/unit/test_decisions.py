"""The run's decisions (stepcluster.decisions), fed records and observations: no cluster, no
SSH, no clock. Each rule is pinned at its boundary (the second a limit is reached, the round a
grace ends), since an off-by-one there fails healthy jobs or polls broken ones for ever."""

import pytest

from stepcluster import decisions as d
from stepcluster.decisions import Action, JobObservation, Limits
from stepcluster.errors import SchedulerError
from stepcluster.record import ClusterRecord, JobRecord, JobState, Phase, Run
from stepcluster.schedulers import Category, JobStatus

NOW = 1_700_000_000
LIMITS = Limits(blocked_job_timeout_seconds=600)
WAITS = {"a": 5, "b": 2, "c": 9}


def status(category, raw="X", **kw):
    return JobStatus("7", category, raw, **kw)


def observe(job=None, *, started="", result="", st=None, now=NOW, limits=LIMITS):
    job = job or JobRecord(state=JobState.RUNNING, job_id="7")
    return d.observe(job, "a", JobObservation(started, result, st), scheduler="slurm", now=now, limits=limits)


def run_of(order="sequential", next_=0, polls=None, **states):
    jobs = {n: JobRecord(state=JobState(s), job_id=None if s == "NOT_STARTED" else f"id-{n}")
            for n, s in states.items()}
    return Run(execution="exec-1", cluster_name="c1", order=order, jobs=jobs, next=next_, polls=polls,
               phase=Phase.RUNNING)


# -- the wrapper's result is final ---------------------------------------------------------------

def test_a_result_line_ends_the_job_whatever_the_scheduler_shows():
    job = JobRecord(state=JobState.RUNNING, job_id="7", scheduler_state="R", reason="Resources",
                    missing_since=NOW - 5, missing_polls=2)
    done = observe(job, started=str(NOW - 10), result=f"0 0 {NOW}", st=status(Category.RUNNING, "R"))
    assert done == JobRecord(state=JobState.SUCCEEDED, job_id="7", exit_code=0, started="2023-11-14T22:13:10Z",
                             ended="2023-11-14T22:13:20Z")


@pytest.mark.parametrize("line, state, code, signal", [
    ("1 0 1700000000", JobState.FAILED, 1, None),
    ("137 9 1700000000", JobState.FAILED, 137, 9),
    ("143 15 1700000000", JobState.FAILED, 143, 15),
    ("0 0", JobState.SUCCEEDED, 0, None),
])
def test_exit_codes_and_signals_are_read_from_the_result_line(line, state, code, signal):
    job = observe(result=line)
    assert (job.state, job.exit_code, job.signal) == (state, code, signal)
    assert job.ended == (None if line == "0 0" else "2023-11-14T22:13:20Z")


@pytest.mark.parametrize("line", ["", "x", "0", "0 0 0 0", "-1 0 1", "0  0 1", "00000 0 1", "0 0 later"])
def test_a_result_file_that_is_not_the_wrappers_line_is_a_failure_never_a_success(line):
    if not line:
        assert observe(result=line, st=status(Category.RUNNING)).state == JobState.RUNNING
        return
    job = observe(result=line)
    assert job.state == JobState.FAILED and job.exit_code is None
    assert "not the wrapper's 'EXIT SIGNAL ENDED' line" in job.reason and repr(line[:80]) in job.reason


def test_a_start_file_sets_started_and_anything_else_in_it_is_ignored():
    assert observe(started=str(NOW), st=status(Category.RUNNING)).started == "2023-11-14T22:13:20Z"
    assert observe(started="soon", st=status(Category.RUNNING)).started is None


# -- the scheduler's view while there is no result -------------------------------------------

def test_queued_and_running_keep_the_schedulers_word_and_reason():
    queued = observe(st=status(Category.QUEUED, "PENDING", reason="Priority"))
    assert (queued.state, queued.scheduler_state, queued.reason) == (JobState.PENDING, "PENDING", "Priority")
    running = observe(st=status(Category.RUNNING, "RUNNING", reason="None"))
    assert (running.state, running.scheduler_state, running.reason) == (JobState.RUNNING, "RUNNING", None)
    for empty in d.NO_REASON:
        assert observe(st=status(Category.QUEUED, reason=empty)).reason is None


def test_a_state_the_adapter_does_not_know_is_an_error_naming_it_never_a_guess():
    with pytest.raises(SchedulerError) as err:
        observe(st=status(Category.UNKNOWN, "Zz"))
    assert "'Zz'" in str(err.value) and "job 'a' (slurm job 7)" in str(err.value)
    assert err.value.scheduler == "slurm" and err.value.job_ids == ("7",)


@pytest.mark.parametrize("category, state", [(Category.FAILED, JobState.FAILED),
                                             (Category.CANCELLED, JobState.CANCELLED)])
def test_a_job_that_ended_without_its_wrapper_takes_the_schedulers_end(category, state):
    job = observe(st=status(category, "NODE_FAIL", exit_code=1, signal=9, reason="node lost"))
    why = {JobState.FAILED: "stopped outside its script (the wrapper recorded no exit code)",
           JobState.CANCELLED: "cancelled outside this run before its script ended"}[state]
    assert job == JobRecord(state=state, job_id="7", exit_code=1, signal=9, ended="2023-11-14T22:13:20Z",
                            scheduler_state="NODE_FAIL", reason=f"{why}; the scheduler says: node lost")
    assert observe(st=status(category, "F", reason="")).reason == why


def test_a_blocked_job_fails_when_its_time_is_up_not_a_second_before():
    blocked = status(Category.QUEUED, "PD", blocked="held by admin")
    first = observe(JobRecord(state=JobState.PENDING, job_id="7"), st=blocked)
    assert first.state == JobState.PENDING and first.blocked_since == NOW
    almost = observe(first, st=blocked, now=NOW + 599)
    assert almost.state == JobState.PENDING and almost.blocked_since == NOW
    failed = observe(almost, st=blocked, now=NOW + 600)
    assert failed.state == JobState.FAILED and failed.blocked_since is None
    assert failed.reason == "cannot start by itself (held by admin) and did not within 600 s"
    assert failed.ended == d.iso(NOW + 600)


def test_a_job_no_longer_blocked_starts_its_clock_again():
    blocked = status(Category.QUEUED, "PD", blocked="held")
    job = observe(JobRecord(state=JobState.PENDING, job_id="7", blocked_since=NOW - 500), st=blocked)
    assert job.blocked_since == NOW - 500
    free = observe(job, st=status(Category.QUEUED, "PD"))
    assert free.blocked_since is None
    again = observe(free, st=blocked, now=NOW + 1)
    assert again.blocked_since == NOW + 1 and again.state == JobState.PENDING


@pytest.mark.parametrize("st", [None, status(Category.MISSING, ""), status(Category.SUCCEEDED, "CD")])
def test_a_job_gone_without_a_result_is_waited_for_then_lost(st):
    limits = Limits(600, missing_grace_seconds=60, missing_min_polls=3)
    job = JobRecord(state=JobState.RUNNING, job_id="7")
    job = observe(job, st=st, limits=limits)
    assert (job.state, job.missing_since, job.missing_polls) == (JobState.RUNNING, NOW, 1)
    job = observe(job, st=st, now=NOW + 100, limits=limits)     # past the grace, 2 rounds only
    assert (job.state, job.missing_since, job.missing_polls) == (JobState.RUNNING, NOW, 2)
    lost = observe(job, st=st, now=NOW + 100, limits=limits)
    assert lost.state == JobState.FAILED and lost.ended == d.iso(NOW + 100)
    assert lost.scheduler_state == (st.raw_state if st and st.raw_state else "MISSING")
    assert lost.reason == "slurm no longer knows the job and its wrapper recorded no exit code within 60 s"


def test_a_missing_job_is_not_lost_before_the_grace_whatever_the_rounds():
    limits = Limits(600, missing_grace_seconds=60, missing_min_polls=3)
    job = JobRecord(state=JobState.RUNNING, job_id="7", missing_since=NOW, missing_polls=10)
    assert observe(job, now=NOW + 59, limits=limits).state == JobState.RUNNING
    assert observe(job, now=NOW + 60, limits=limits).state == JobState.FAILED


def test_a_result_after_a_missing_spell_clears_it():
    job = JobRecord(state=JobState.RUNNING, job_id="7", missing_since=NOW, missing_polls=2)
    assert observe(job, result="0 0 1") == JobRecord(state=JobState.SUCCEEDED, job_id="7", exit_code=0,
                                                    ended="1970-01-01T00:00:01Z")


@pytest.mark.parametrize("result, st, asked", [
    ("", None, True), ("", status(Category.MISSING), True), ("", status(Category.SUCCEEDED), True),
    ("", status(Category.RUNNING), False), ("", status(Category.QUEUED), False),
    ("", status(Category.FAILED), False), ("0 0 1", None, False), ("0 0 1", status(Category.SUCCEEDED), False),
])
def test_the_schedulers_history_is_asked_only_about_jobs_gone_without_a_result(result, st, asked):
    assert d.needs_history(JobObservation("", result, st)) is asked


# -- a round over the run ---------------------------------------------------------------------

def test_a_round_observes_active_jobs_only_and_says_which_changed():
    run = run_of("parallel", a="RUNNING", b="PENDING", c="SUCCEEDED")
    observations = {"a": JobObservation(result="0 0 1"),
                    "b": JobObservation(status=JobStatus("id-b", Category.QUEUED, "PD")),
                    "c": JobObservation(result="1 0 1")}
    after, changed = d.apply_round(run, observations, scheduler="slurm", now=NOW, limits=LIMITS)
    assert changed == ["a"]
    assert after.jobs["a"].state == JobState.SUCCEEDED and after.jobs["c"].state == JobState.SUCCEEDED
    assert after.polls == 1 and run.polls is None
    assert run.jobs["a"].state == JobState.RUNNING        # the record given is not changed
    again, _ = d.apply_round(after, observations, scheduler="slurm", now=NOW, limits=LIMITS)
    assert again.polls == 2


def test_an_active_job_the_round_did_not_see_counts_as_missing():
    after, changed = d.apply_round(run_of(a="RUNNING"), {}, scheduler="slurm", now=NOW, limits=LIMITS)
    assert changed == [] and after.jobs["a"].missing_polls == 1


def test_the_first_failed_job_of_the_round_fails_the_run_with_its_stderr():
    run = run_of("parallel", a="FAILED", b="CANCELLED", c="RUNNING")
    run.jobs["a"] = run.jobs["a"].but(exit_code=3)
    decision = d.decide(run, ["a", "b"], wait_times=WAITS, scheduler="slurm", stderr_tails={"a": "  boom \n"})
    assert decision.action == Action.FAIL and decision.run.phase == Phase.FAILED
    assert decision.failure == decision.run.failure == {
        "Error": "JobFailed",
        "Cause": "Job 'a' (slurm job id-a) ended FAILED with exit code 3\nLast lines of its stderr:\nboom"}
    assert decision.changed == ("a", "b") and decision.wait_seconds == 9
    assert run.phase == Phase.RUNNING and run.failure is None


def test_a_job_that_had_failed_before_the_round_is_not_this_rounds_failure():
    run = run_of("parallel", a="FAILED", b="RUNNING")
    assert d.decide(run, [], wait_times=WAITS, scheduler="slurm").action == Action.WAIT


@pytest.mark.parametrize("order, next_, states, phase, action", [
    ("sequential", 1, dict(a="RUNNING", b="NOT_STARTED"), Phase.RUNNING, Action.WAIT),
    ("sequential", 1, dict(a="SUCCEEDED", b="NOT_STARTED"), Phase.NEXT, Action.SUBMIT),
    ("sequential", 2, dict(a="SUCCEEDED", b="SUCCEEDED"), Phase.SUCCEEDED, Action.FINISH),
    ("parallel", 0, dict(a="SUCCEEDED", b="PENDING"), Phase.RUNNING, Action.WAIT),
    ("parallel", 0, dict(a="SUCCEEDED", b="SUCCEEDED"), Phase.SUCCEEDED, Action.FINISH),
])
def test_what_comes_after_a_round(order, next_, states, phase, action):
    decision = d.decide(run_of(order, next_, **states), [], wait_times=WAITS, scheduler="slurm")
    assert (decision.run.phase, decision.action, decision.failure) == (phase, action, None)
    assert decision.run.wait_seconds == decision.wait_seconds


def test_the_wait_is_the_smallest_wait_time_of_the_jobs_in_flight():
    assert d.wait_seconds(run_of("parallel", a="RUNNING", b="SUCCEEDED", c="PENDING"), WAITS) == 5
    assert d.wait_seconds(run_of("parallel", a="RUNNING", b="PENDING", c="PENDING"), WAITS) == 2
    assert d.wait_seconds(run_of("parallel", a="SUCCEEDED", b="NOT_STARTED", c="FAILED"), WAITS) == 2


def test_polling_slows_down_before_the_history_limit():
    waits = {n: d.wait_seconds(run_of(a="RUNNING", polls=n), {"a": 5})
             for n in (0, 1499, 1500, 1549, 1550, 1600, 2100)}
    assert waits == {0: 5, 1499: 5, 1500: 10, 1549: 10, 1550: 20, 1600: 40, 2100: 3600}


# -- submission and cancel -------------------------------------------------------------------

def test_the_next_batch_is_the_next_job_or_every_job_not_started():
    run, batch = d.next_batch(run_of("sequential", 1, a="SUCCEEDED", b="NOT_STARTED", c="NOT_STARTED"),
                              ["a", "b", "c"])
    assert batch == ["b"] and run.next == 2
    run, batch = d.next_batch(run_of("parallel", 0, c="NOT_STARTED", a="RUNNING", b="NOT_STARTED"),
                              ["a", "b", "c"])
    assert batch == ["b", "c"] and run.next == 0


def test_submitted_jobs_are_pending_with_their_ids():
    run = d.submitted(run_of("parallel", a="NOT_STARTED", b="NOT_STARTED", c="SUCCEEDED"),
                      {"a": "11", "b": "12"}, wait_times=WAITS)
    assert [(n, j.state, j.job_id) for n, j in run.jobs.items()] == [
        ("a", JobState.PENDING, "11"), ("b", JobState.PENDING, "12"), ("c", JobState.SUCCEEDED, "id-c")]
    assert run.phase == Phase.RUNNING and run.wait_seconds == 2


def test_a_job_that_cannot_be_submitted_fails_the_run_saying_why():
    run = d.failed_before_submit(run_of(a="NOT_STARTED"), "a", "no such handler", now=NOW)
    assert run.jobs["a"] == JobRecord(state=JobState.FAILED, reason="no such handler", ended=d.iso(NOW))
    assert run.phase == Phase.FAILED
    assert run.failure == {"Error": "JobFailed", "Cause": "Job 'a' failed before submission: no such handler"}


def test_cancel_marks_active_jobs_and_leftovers_never_ended_ones():
    run = run_of("parallel", a="RUNNING", b="PENDING", c="NOT_STARTED")
    run.jobs["d"] = JobRecord(state=JobState.NOT_STARTED)
    run.jobs["e"] = JobRecord(state=JobState.SUCCEEDED, job_id="5")
    after = d.cancelled(run, ["c", "e"], now=NOW)
    assert {n: j.state for n, j in after.jobs.items()} == {
        "a": JobState.CANCELLED, "b": JobState.CANCELLED, "c": JobState.CANCELLED,
        "d": JobState.NOT_STARTED, "e": JobState.SUCCEEDED}
    assert after.jobs["a"].ended == d.iso(NOW) and after.jobs["d"].ended is None


def test_a_cancel_not_confirmed_leaves_the_job_in_flight_with_the_reason():
    run = run_of("parallel", a="RUNNING", b="PENDING", c="NOT_STARTED")
    after = d.cancelled(run, ["b"], {"a": "id-a", "c": "99"}, said="job id-a is COMPLETING", now=NOW)
    assert after.jobs["b"].state == JobState.CANCELLED
    assert after.jobs["a"] == JobRecord(JobState.RUNNING, "id-a", ended=None,
                                        reason="its cancel was not confirmed (job id-a is COMPLETING)")
    # found submitted on the head node though the record never had its id: in flight, with it
    assert (after.jobs["c"].state, after.jobs["c"].job_id) == (JobState.PENDING, "99")


@pytest.mark.parametrize("category, running", [
    (Category.QUEUED, True), (Category.RUNNING, True), (Category.CANCELLED, False),
    (Category.SUCCEEDED, False), (Category.FAILED, False), (Category.MISSING, False), (None, False)])
def test_a_cancel_is_confirmed_once_the_scheduler_shows_the_job_ended_or_forgot_it(category, running):
    assert d.still_running(status(category) if category else None) is running


def test_jobs_that_ended_in_a_round_are_those_whose_results_are_kept_then():
    run = run_of("parallel", a="SUCCEEDED", b="RUNNING", c="FAILED")
    run.jobs["c"] = run.jobs["c"].but(job_id=None)      # refused at submission: nothing ran
    assert d.ended_jobs(run, ["a", "b", "c"]) == ["a"]


def released(**states):
    run = run_of("parallel", **states)
    run.cluster = ClusterRecord("READY", run_dir="/home/hpc/stepcluster/exec-1")
    return run


def test_a_release_that_did_everything_has_nothing_to_say():
    run = released(a="SUCCEEDED", b="CANCELLED")
    run.jobs["a"] = run.jobs["a"].but(kept=True)
    assert d.release_note(run, scheduler="slurm", cluster_deleted=True) is None
    assert d.release_note(run, scheduler="slurm", unconfirmed={}, said="x", cluster_deleted=False) is None


def test_an_unreachable_head_node_names_what_was_kept_and_what_may_run_and_where():
    run = released(a="SUCCEEDED", b="RUNNING", c="PENDING", d="NOT_STARTED")
    run.jobs["a"] = run.jobs["a"].but(kept=True)
    run.jobs["b"] = run.jobs["b"].but(started="2023-11-14T22:13:20Z")
    run.results = {"prefix": "s3://bkt/exec-1/"}
    note = d.release_note(run, scheduler="slurm", unreachable="cannot reach head node hpc@h:22: timed out",
                          cluster_deleted=False)
    assert note == (
        "The head node could not be reached to keep the last results and clean up: cannot reach head "
        "node hpc@h:22: timed out. Not kept: the results of jobs 'b', 'c'; kept: those of job 'a' "
        "(kept under s3://bkt/exec-1/). Jobs 'b' (slurm job id-b), 'c' (slurm job id-c) may still be "
        "running on the head node: they were not cancelled; the run's folder /home/hpc/stepcluster/exec-1 "
        "is kept until they are gone (`stepcluster cleanup exec-1` cancels them and removes it).")
    deleted = d.release_note(run, scheduler="slurm", unreachable="x", cluster_deleted=True)
    assert deleted.endswith("Jobs 'b' (slurm job id-b), 'c' (slurm job id-c) may have been running until "
                            "the cluster was deleted: they were not cancelled.")


def test_files_not_kept_and_cancels_not_confirmed_are_named():
    run = released(a="SUCCEEDED", b="RUNNING")
    run.jobs["a"] = run.jobs["a"].but(kept=True)
    run.results = {"prefix": "s3://bkt/exec-1/", "manifest": "s3://bkt/exec-1/manifest.json",
                   "not_kept": {"a": ["output/x"]}, "not_kept_count": 3}
    note = d.release_note(run, scheduler="sge", unconfirmed={"b": "8"}, said="job 8 is r", cluster_deleted=True)
    assert note == ("3 result files of job 'a' could not be kept (listed in s3://bkt/exec-1/manifest.json). "
                    "Jobs 'b' (sge job 8) may have been running until the cluster was deleted: sge did not "
                    "confirm their cancel (job 8 is r).")
    many = released(**{f"j{i}": "RUNNING" for i in range(12)})
    assert "'j9' and 2 more" in d.release_note(many, scheduler="sge", unreachable="x", cluster_deleted=True)


# -- the cause a user reads ------------------------------------------------------------------

@pytest.mark.parametrize("job, tail, cause", [
    (JobRecord(JobState.FAILED, "7", exit_code=2), "", "Job 'a' (sge job 7) ended FAILED with exit code 2"),
    (JobRecord(JobState.FAILED, "7", exit_code=137, signal=9, scheduler_state="OUT_OF_MEMORY"), "",
     "Job 'a' (sge job 7) ended FAILED (scheduler state OUT_OF_MEMORY) killed by signal 9"),
    (JobRecord(JobState.CANCELLED, "7", reason="by root"), " \n",
     "Job 'a' (sge job 7) ended CANCELLED; reason: by root"),
    (JobRecord(JobState.FAILED, None, exit_code=0, reason="lost"), "e1\ne2\n",
     "Job 'a' (sge job None) ended FAILED with exit code 0; reason: lost\nLast lines of its stderr:\ne1\ne2"),
])
def test_the_failure_cause_names_job_id_state_code_reason_and_stderr(job, tail, cause):
    assert d.describe_failure("a", job, "sge", tail) == cause


def test_times_are_utc_iso_8601():
    assert d.iso(None) is None and d.iso(0) == "1970-01-01T00:00:00Z"


def test_times_are_utc_whatever_the_machines_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert d.iso(0) == "1970-01-01T00:00:00Z"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_an_unknown_state_of_a_job_without_an_id_names_no_id():
    with pytest.raises(SchedulerError) as err:
        observe(JobRecord(state=JobState.RUNNING), st=status(Category.UNKNOWN, "Zz"))
    assert err.value.job_ids == ()


def test_a_bad_result_line_clears_what_the_scheduler_said_and_is_quoted_to_80_characters():
    job = JobRecord(state=JobState.RUNNING, job_id="7", scheduler_state="R", exit_code=5, signal=9,
                    missing_since=NOW, missing_polls=2)
    line = "y" * 79 + "z" + "tail"
    failed = observe(job, result=line)
    assert failed == JobRecord(state=JobState.FAILED, job_id="7", reason=(
        "its result file is not the wrapper's 'EXIT SIGNAL ENDED' line: " + repr("y" * 79 + "z")))


def test_a_round_names_the_job_and_scheduler_in_what_it_reports():
    run = run_of("parallel", b="RUNNING")
    with pytest.raises(SchedulerError, match=r"job 'b' \(sge job id-b\).*the sge adapter"):
        d.apply_round(run, {"b": JobObservation(status=JobStatus("id-b", Category.UNKNOWN, "Zz"))},
                      scheduler="sge", now=NOW, limits=LIMITS)
    lost, _ = d.apply_round(run, {}, scheduler="sge", now=NOW, limits=Limits(600, 0, 1))
    assert lost.jobs["b"].reason.startswith("sge no longer knows the job")


def test_a_failed_job_without_a_stderr_tail_gets_no_stderr_section():
    run = run_of("parallel", a="FAILED", b="FAILED")
    decision = d.decide(run, ["a"], wait_times=WAITS, scheduler="slurm", stderr_tails={"b": "other"})
    assert decision.failure["Cause"] == "Job 'a' (slurm job id-a) ended FAILED"


# -- a scheduler that does not answer ---------------------------------------------------------

def test_an_outage_round_judges_only_jobs_with_a_result_and_notes_since_when():
    run = run_of("parallel", a="RUNNING", b="PENDING")
    observations = {"a": JobObservation(str(NOW - 9), "0 0 1"), "b": JobObservation(str(NOW - 9))}
    after, changed = d.apply_round(run, observations, scheduler="slurm", now=NOW, limits=LIMITS,
                                   scheduler_failure="squeue: error: Unable to contact\n slurm controller ")
    assert changed == ["a"] and after.jobs["a"].state == JobState.SUCCEEDED
    assert after.jobs["b"] == run.jobs["b"]          # untouched: not missing, not started
    assert (after.scheduler_silent_since, after.scheduler_said) == (
        NOW, "squeue: error: Unable to contact slurm controller")
    later, _ = d.apply_round(after, {}, scheduler="slurm", now=NOW + 50, limits=LIMITS, scheduler_failure="")
    assert (later.scheduler_silent_since, later.scheduler_said) == (NOW, "no output")
    back, _ = d.apply_round(later, {}, scheduler="slurm", now=NOW + 60, limits=LIMITS)
    assert back.scheduler_silent_since is None and back.scheduler_said is None
    assert len(d.apply_round(run, {}, scheduler="slurm", now=NOW, limits=LIMITS,
                             scheduler_failure="x" * 400)[0].scheduler_said) == 300


def test_a_scheduler_silent_for_its_limit_fails_the_run_not_a_second_before():
    limits = Limits(600, scheduler_outage_seconds=300)
    run = run_of("parallel", a="RUNNING")
    run.scheduler_silent_since, run.scheduler_said = NOW, "qstat: unable to contact qmaster"
    kw = dict(wait_times=WAITS, scheduler="sge", limits=limits)
    assert d.decide(run, [], now=NOW + 299, **kw).action == Action.WAIT
    failed = d.decide(run, [], now=NOW + 300, **kw)
    assert failed.action == Action.FAIL and failed.failure == {
        "Error": "SchedulerUnavailable",
        "Cause": "sge has not answered for 300 s (the limit is 300 s): qstat: unable to contact qmaster"}
    assert d.decide(run, [], **kw).action == Action.WAIT                 # no clock given: no verdict
    assert d.decide(run, [], now=NOW + 300, wait_times=WAITS, scheduler="sge").action == Action.WAIT
    run.jobs["a"] = run.jobs["a"].but(state=JobState.FAILED, exit_code=2)
    assert d.decide(run, ["a"], now=NOW + 300, **kw).failure["Error"] == "JobFailed"   # the job first


def test_a_run_past_its_time_limit_fails_not_a_second_before_and_never_waits_past_it():
    limits = Limits(600, max_run_seconds=3600)
    run = run_of("sequential", next_=2, a="SUCCEEDED", b="RUNNING", c="NOT_STARTED")
    run.started_at = NOW
    kw = dict(wait_times=WAITS, scheduler="slurm", limits=limits)
    early = d.decide(run, [], now=NOW + 3599, **kw)
    assert (early.action, early.wait_seconds) == (Action.WAIT, 1)     # b's 2 s would overshoot
    assert d.decide(run, [], now=NOW + 3000, **kw).wait_seconds == 2
    over = d.decide(run, [], now=NOW + 3600, **kw)
    assert over.action == Action.FAIL and over.failure == {
        "Error": "RunTimeLimitReached",
        "Cause": "The run reached its time limit (MaxRunMinutes=60; it started at 2023-11-14T22:13:20Z): "
                 "jobs 'b' (slurm job id-b, RUNNING) were still queued or running and are cancelled, their "
                 "results so far kept; job 'c' never started."}
    # the next sequential job is not submitted past the limit either
    run.jobs["b"] = run.jobs["b"].but(state=JobState.SUCCEEDED)
    run.next = 2
    assert d.decide(run, ["b"], now=NOW + 3600, **kw).failure["Error"] == "RunTimeLimitReached"
    # ...but a run whose last job ended in that round has succeeded
    run.jobs["c"] = run.jobs["c"].but(state=JobState.SUCCEEDED, job_id="id-c")
    run.next = 3
    assert d.decide(run, ["c"], now=NOW + 9999, **kw).action == Action.FINISH
    # no start time (a record from before this field) or no limit: no verdict
    run.started_at = None
    run.jobs["c"] = run.jobs["c"].but(state=JobState.RUNNING)
    assert d.decide(run, [], now=NOW + 9999, **kw).action == Action.WAIT


def test_jobs_found_in_a_folder_whose_record_is_gone():
    jobs = d.found_on_head_node({"done": ("41", "0 0 1"), "bad": ("43", "2 0 1"), "left": ("42", ""),
                                 "unsure": (None, "")}, now=NOW)
    assert jobs == {
        "done": JobRecord(JobState.SUCCEEDED, "41", exit_code=0, ended="1970-01-01T00:00:01Z"),
        "bad": JobRecord(JobState.FAILED, "43", exit_code=2, ended="1970-01-01T00:00:01Z"),
        "left": JobRecord(JobState.CANCELLED, "42", ended=d.iso(NOW),
                          reason="cancelled by the cleanup after the execution ended"),
        "unsure": JobRecord(JobState.CANCELLED, None, ended=d.iso(NOW),
                            reason="cancelled by the cleanup after the execution ended")}


def test_an_outage_round_sees_every_job_with_a_result_whatever_its_place():
    run = run_of("parallel", a="RUNNING", b="RUNNING", c="RUNNING")
    observations = {"b": JobObservation(result="0 0 1"), "c": JobObservation(result="3 0 1")}
    after, changed = d.apply_round(run, observations, scheduler="slurm", now=NOW, limits=LIMITS,
                                   scheduler_failure="down")
    assert changed == ["b", "c"] and after.jobs["a"].state == JobState.RUNNING


# -- a round that watches on the head node (PollWindowSeconds) ----------------------------------
WATCH = Limits(blocked_job_timeout_seconds=600, max_run_seconds=3600, poll_window_seconds=720)


def look(run, changed=(), window_left=700.0, limits=WATCH, now=NOW, **kw):
    return d.next_look(run, list(changed), now=now, wait_times=WAITS, window_left=window_left,
                       limits=limits, scheduler="slurm", **kw)


def test_a_watching_round_looks_again_at_the_smallest_wait_time_in_flight():
    run = run_of("parallel", a="RUNNING", b="PENDING", c="SUCCEEDED")
    run.started_at = NOW
    assert look(run) == 2
    assert look(run, window_left=1.5) == 1.5         # never past its window ...
    assert look(run, window_left=0) == 0
    run.started_at = NOW - 3600 + 1                   # ... nor past MaxRunMinutes
    assert look(run) == 1


def test_a_watching_round_reports_a_change_an_end_a_failure_or_the_scheduler_going_silent():
    run = run_of("parallel", a="RUNNING", b="PENDING", c="SUCCEEDED")
    assert look(run, changed=["c"]) == 0              # ended
    assert look(run, changed=["b"]) == 0              # any change but a start (here: none known)
    run.scheduler_silent_since = NOW - 10
    assert look(run) == 0                             # the scheduler stopped answering: say so
    assert look(run, silent_at_start=True) == 2       # still silent: wait it out, look every wait_time
    run.scheduler_silent_since = NOW - 899            # ... but not past the outage limit
    assert look(run, silent_at_start=True) == 1
    assert look(run_of("parallel", a="RUNNING"), silent_at_start=True) == 0   # answering again


def test_a_start_is_reported_once_the_job_has_run_its_wait_time_an_end_at_once():
    run = run_of("parallel", a="RUNNING", c="PENDING", b="RUNNING")   # wait_times 5, 9, 2
    run.jobs["b"] = run.jobs["b"].but(state=JobState.SUCCEEDED)        # a and c in flight
    run.jobs["a"] = run.jobs["a"].but(started=d.iso(NOW - 1))
    assert look(run, changed=["a"]) == 4              # seen starting 1 s ago: report in 4 s ...
    run.jobs["a"] = run.jobs["a"].but(started=d.iso(NOW - 5))
    assert look(run, changed=["a"]) == 0              # ... it has run its wait_time: report now
    run.jobs["a"] = run.jobs["a"].but(started=d.iso(NOW + 600))
    assert look(run, changed=["a"]) == 5              # a head node clock ahead: never past wait_time
    run.jobs["a"] = run.jobs["a"].but(started=None)
    assert look(run, changed=["a"]) == 0              # no start time known: report it now
    run.jobs["a"] = run.jobs["a"].but(started=d.iso(NOW))
    assert look(run, changed=["a", "b"]) == 0         # an end beside a fresh start: report now
    assert d.epoch(d.iso(NOW)) == NOW and d.epoch("yesterday") is None


def test_a_watching_round_comes_back_when_a_blocked_job_reaches_its_timeout():
    run = run_of("parallel", a="PENDING", b="PENDING")
    run.jobs["a"] = run.jobs["a"].but(blocked_since=NOW - 599)
    assert look(run) == 1
    run.jobs["a"] = run.jobs["a"].but(blocked_since=NOW - 700)   # past it: report now
    assert look(run) == 0


def test_no_jobs_in_flight_means_reporting_now():
    assert look(run_of("sequential", next_=1, a="SUCCEEDED", b="NOT_STARTED")) == 0
    assert look(run_of("parallel", a="SUCCEEDED", b="SUCCEEDED")) == 0


def test_a_watching_run_goes_straight_back_to_poll_jobs():
    run = run_of("parallel", a="RUNNING", b="PENDING")
    decision = d.decide(run, [], wait_times=WAITS, scheduler="slurm", now=NOW, limits=WATCH)
    assert (decision.run.phase, decision.action) == (Phase.WATCHING, Action.WAIT)
    assert d.decide(run, [], wait_times=WAITS, scheduler="slurm", now=NOW, limits=LIMITS).run.phase == Phase.RUNNING
    submitted = d.submitted(run_of("parallel", a="NOT_STARTED"), {"a": "9"}, wait_times=WAITS, watching=True)
    assert submitted.phase == Phase.WATCHING


def test_jobs_left_unkept_are_the_ended_ones_not_kept():
    run = run_of("parallel", a="SUCCEEDED", b="FAILED", c="RUNNING")
    run.jobs["a"] = run.jobs["a"].but(kept=True)
    assert d.unkept_jobs(run) == ["b"]


# -- a graph of jobs, retries, failures that let the others finish (issue 12) --------------------

DIAMOND = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
FOUR = {"a": 5, "b": 2, "c": 9, "d": 3}


def test_a_job_is_ready_once_every_job_it_waits_for_succeeded():
    assert d.ready_jobs(run_of("parallel", a="NOT_STARTED", b="NOT_STARTED", c="NOT_STARTED", d="NOT_STARTED"),
                        DIAMOND) == ["a"]
    assert d.ready_jobs(run_of("parallel", a="SUCCEEDED", b="NOT_STARTED", c="NOT_STARTED", d="NOT_STARTED"),
                        DIAMOND) == ["b", "c"]
    assert d.ready_jobs(run_of("parallel", a="SUCCEEDED", b="SUCCEEDED", c="RUNNING", d="NOT_STARTED"), DIAMOND) == []
    assert d.ready_jobs(run_of("parallel", a="SUCCEEDED", b="SUCCEEDED", c="SUCCEEDED", d="NOT_STARTED"),
                        DIAMOND) == ["d"]
    # a failed prerequisite: never ready
    assert d.ready_jobs(run_of("parallel", a="SUCCEEDED", b="FAILED", c="SUCCEEDED", d="NOT_STARTED"), DIAMOND) == []
    # without a graph: the order's own (sequential: a chain; parallel: a fan)
    assert d.ready_jobs(run_of("sequential", a="SUCCEEDED", b="NOT_STARTED", c="NOT_STARTED")) == ["b"]
    assert d.ready_jobs(run_of("parallel", a="RUNNING", b="NOT_STARTED", c="NOT_STARTED")) == ["b", "c"]


def test_a_round_that_makes_jobs_ready_submits_them_while_others_run():
    run = run_of("parallel", a="SUCCEEDED", b="SUCCEEDED", c="RUNNING", d="NOT_STARTED")
    assert d.decide(run, ["b"], wait_times=FOUR, scheduler="slurm", prerequisites=DIAMOND).action == Action.WAIT
    run = run_of("parallel", a="SUCCEEDED", b="RUNNING", c="NOT_STARTED", d="NOT_STARTED")
    decision = d.decide(run, ["a"], wait_times=FOUR, scheduler="slurm", prerequisites=DIAMOND)
    assert decision.action == Action.SUBMIT and decision.run.phase == Phase.NEXT
    run, batch = d.next_batch(run, list(DIAMOND), DIAMOND)
    assert batch == ["c"]
    # a watching round reports at once when a job became ready, not at its window's end
    run = run_of("parallel", a="SUCCEEDED", b="RUNNING", c="NOT_STARTED", d="NOT_STARTED")
    assert d.next_look(run, ["a"], now=NOW, wait_times=FOUR, window_left=600, limits=LIMITS, scheduler="slurm",
                       prerequisites=DIAMOND) == 0
    # ... and a start of one whose dependents still wait is no reason to report
    run = run_of("parallel", a="RUNNING", b="NOT_STARTED", c="NOT_STARTED", d="NOT_STARTED")
    run.jobs["a"] = run.jobs["a"].but(started="2023-11-14T22:13:20Z")
    assert d.next_look(run, ["a"], now=NOW, wait_times=FOUR, window_left=600,
                       limits=Limits(600, poll_window_seconds=600), scheduler="slurm", prerequisites=DIAMOND) > 0


def test_a_failure_cancels_the_rest_unless_the_run_lets_independent_jobs_finish():
    run = run_of("parallel", a="SUCCEEDED", b="FAILED", c="RUNNING", d="NOT_STARTED")
    cancel = d.decide(run, ["b"], wait_times=FOUR, scheduler="slurm", prerequisites=DIAMOND)
    assert cancel.action == Action.FAIL and cancel.failure["Cause"].startswith("Job 'b' (slurm job id-b) ended FAILED")
    finish = d.decide(run, ["b"], wait_times=FOUR, scheduler="slurm", prerequisites=DIAMOND, on_failure="finish")
    assert finish.action == Action.WAIT                  # c goes on; d waits for b, so never starts
    assert d.blamed_jobs(run, ["b"], on_failure="finish", prerequisites=DIAMOND) == []
    run.jobs["c"] = JobRecord(state=JobState.FAILED, job_id="id-c", exit_code=2)
    assert d.blamed_jobs(run, ["c"], on_failure="finish", prerequisites=DIAMOND) == ["b", "c"]
    done = d.decide(run, ["c"], wait_times=FOUR, scheduler="slurm", prerequisites=DIAMOND, on_failure="finish",
                    stderr_tails={"b": "b's complaint", "c": "c's complaint"})
    cause = done.failure["Cause"]
    assert done.action == Action.FAIL and done.failure["Error"] == "JobFailed"
    assert cause.startswith("Jobs 'b', 'c' failed; the jobs that did not wait for them ran to their end "
                            "([order] on_failure = finish), and job 'd' that did never started.")
    assert "Job 'b' (slurm job id-b)" in cause and "c's complaint" in cause and "b's complaint" in cause


def rule(retries, *on):
    return d.RetryRule(retries, tuple(on))


@pytest.mark.parametrize("job, retry_rule, due", [
    (JobRecord(state=JobState.FAILED, job_id="1", exit_code=137, signal=9), rule(1, "137"), True),
    (JobRecord(state=JobState.FAILED, job_id="1", exit_code=None, signal=9), rule(1, "137"), True),   # 128 + 9
    (JobRecord(state=JobState.FAILED, job_id="1", exit_code=1), rule(1, "137"), False),
    (JobRecord(state=JobState.FAILED, job_id="1", exit_code=1), rule(1), True),                       # any failure
    (JobRecord(state=JobState.FAILED, job_id="1", scheduler_state="NODE_FAIL"), rule(2, "NODE_FAIL"), True),
    (JobRecord(state=JobState.FAILED, job_id="1", scheduler_state="CANCELLED by 0"), rule(2, "NODE_FAIL"), False),
    (JobRecord(state=JobState.FAILED, job_id="1", exit_code=3, attempt=2), rule(1), False),          # none left
    (JobRecord(state=JobState.FAILED, job_id="1", exit_code=3, attempt=2), rule(2), True),
    (JobRecord(state=JobState.CANCELLED, job_id="1"), rule(3), False),
    (JobRecord(state=JobState.FAILED, job_id=None, reason="refused"), rule(3), False),               # never submitted
    (JobRecord(state=JobState.FAILED, job_id="1", reason="cannot start by itself (held) and did not within 600 s"),
     rule(3), False),
    (JobRecord(state=JobState.SUCCEEDED, job_id="1", exit_code=0), rule(3), False),
    (JobRecord(state=JobState.FAILED, job_id="1", exit_code=1), None, False),
])
def test_a_failure_is_retried_when_the_job_has_attempts_left_and_retry_on_names_it(job, retry_rule, due):
    assert d.retry_due(job, retry_rule) is due


def test_a_retried_job_becomes_its_next_attempt_keeping_the_last_one():
    run = run_of("parallel", a="RUNNING", b="RUNNING")
    seen = {"a": JobObservation(str(NOW - 5), f"137 9 {NOW}"), "b": JobObservation(str(NOW - 5), f"1 0 {NOW}")}
    after, changed = d.apply_round(run, seen, scheduler="slurm", now=NOW, limits=LIMITS,
                                   retries={"a": rule(1, "137"), "b": rule(1, "137")})
    assert changed == ["a", "b"]
    assert after.jobs["a"] == JobRecord(attempt=2, attempts=[{
        "attempt": 1, "job_id": "id-a", "state": "FAILED", "exit_code": 137, "signal": 9,
        "started": "2023-11-14T22:13:15Z", "ended": "2023-11-14T22:13:20Z"}])
    assert after.jobs["b"].state == JobState.FAILED                  # exit 1: not what retry_on names
    assert d.ready_jobs(after) == ["a"]
    # the second attempt fails too: the cause says so, with the first
    last = after.copy()
    last.jobs["a"] = after.jobs["a"].but(state=JobState.FAILED, job_id="id-a2", exit_code=137, signal=9)
    cause = d.decide(last, ["a"], wait_times=WAITS, scheduler="slurm").failure["Cause"]
    assert cause.startswith("Job 'a' (slurm job id-a2) ended FAILED killed by signal 9 on its attempt 2; "
                            "earlier attempts: 1 (slurm job id-a) killed by signal 9")


def test_the_executions_own_budget_ends_the_run_when_it_is_the_sooner_limit():
    run = run_of("parallel", a="RUNNING", b="SUCCEEDED")
    run.started_at, run.max_seconds = NOW - 36, 36
    limits = Limits(600, max_run_seconds=7 * 86400)
    over = d.decide(run, [], wait_times=WAITS, scheduler="slurm", now=NOW, limits=limits)
    assert over.action == Action.FAIL and over.failure["Error"] == "BudgetReached"
    assert over.failure["Cause"].startswith("The run reached its budget (max_hours = 0.01, given when it was "
                                            "started; it started at 2023-11-14T22:12:44Z): jobs 'a' (slurm job "
                                            "id-a, RUNNING) were still queued or running and are cancelled")
    # a second before: rounds wait no longer than what is left
    early = d.decide(run, [], wait_times=WAITS, scheduler="slurm", now=NOW - 1, limits=limits)
    assert early.action == Action.WAIT and early.wait_seconds == 1
    # the deployment's MaxRunMinutes, when it is the sooner, says so as before
    run.max_seconds = 10 * 86400
    assert d.decide(run, [], wait_times=WAITS, scheduler="slurm", now=NOW + 7 * 86400,
                    limits=limits).failure["Error"] == "RunTimeLimitReached"


def test_a_job_that_never_reached_the_scheduler_is_described_by_why():
    job = JobRecord(state=JobState.FAILED, reason="slurm refused the job (exit 1): invalid partition")
    assert d.describe_failure("b", job, "slurm", "") == (
        "Job 'b' failed before submission: slurm refused the job (exit 1): invalid partition")
