"""What a round's observations mean for the run, and what to do next: pure functions.

No SSH, no boto3, no clock: the service gathers what the head node showed (each job's start and
result files, the scheduler's answers) into `JobObservation`s, passes the time it read, and
gets back the changed record and a `Decision`. So every rule below (when a job has ended, when
it is lost, when it is blocked for too long, which failure the run reports, how long to wait)
is tested by feeding it records, without a cluster (tests/unit/test_decisions.py).

The wrapper's result file is final: whatever the scheduler shows meanwhile, a job whose wrapper
recorded an exit code has ended with it. The scheduler's view matters while a job is queued or
running, and when a job died without its wrapper recording anything (killed, node failure,
cancelled by someone).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping, Sequence

from stepcluster import graph
from stepcluster.errors import SchedulerError
from stepcluster.record import JobRecord, JobState, Phase, Run
from stepcluster.schedulers import Category, JobStatus

#: A job the scheduler no longer knows, with no result file, is given this long (and at least
#: MISSING_MIN_POLLS rounds) to show its result before it is declared lost. SGE, for one,
#: drops a job from qstat about a second before qacct knows it.
MISSING_GRACE_SECONDS = 60
MISSING_MIN_POLLS = 3
#: Polling slows down after this many rounds (9 history events each; 25,000 fail a run)...
POLLS_AT_WAIT_TIME = 1500
#: ...doubling its interval every this many rounds, up to MAX_WAIT_SECONDS.
POLLS_PER_DOUBLING = 50
MAX_WAIT_SECONDS = 3600
#: The wrapper's result line: exit code (0..255), signal (0: none), epoch it ended.
RESULT_LINE = re.compile(r"(\d{1,3}) (\d{1,3})(?: (\d{1,12}))?")
#: A scheduler that does not answer (slurmctld down, sge_qmaster restarting) is an outage the
#: run waits out, this long, before it fails: healthy jobs go on running meanwhile.
SCHEDULER_OUTAGE_SECONDS = 900
#: The scheduler's "no reason" words, shown as no reason at all.
NO_REASON = ("None", "(null)", "")


class Action(str, enum.Enum):
    """What the state machine does after this round (the run's phase says the same to the ASL)."""

    WAIT = "WAIT"        # wait `wait_seconds`, poll again
    SUBMIT = "SUBMIT"    # submit the next job (sequential), in this round if possible
    FAIL = "FAIL"        # cancel what is left, keep the results, tear down, fail with `failure`
    FINISH = "FINISH"    # keep the results, tear down, succeed


PHASE_ACTIONS = {Phase.RUNNING: Action.WAIT, Phase.WATCHING: Action.WAIT, Phase.NEXT: Action.SUBMIT,
                 Phase.FAILED: Action.FAIL, Phase.SUCCEEDED: Action.FINISH}


@dataclass(frozen=True)
class JobObservation:
    """One job as this round saw it on the head node."""

    started: str = ""                 # the wrapper's start file: epoch seconds, or empty
    result: str = ""                  # the wrapper's result line "EXIT SIGNAL ENDED", or empty
    status: JobStatus | None = None   # the scheduler's answer (its history's, where asked)
    tasks: "TaskTally | None" = None  # an array job's tasks, as their files show them


@dataclass(frozen=True)
class TaskTally:
    """An array job's task records on the head node this round (jobscripts.inspect_script)."""

    total: int
    started: int = 0
    ended: int = 0
    failed: int = 0
    last_ended: str = ""                # epoch of the latest task end
    failed_task: str | None = None      # the failed task with the lowest index
    failed_result: str = ""             # its "EXIT SIGNAL ENDED"

    def counts(self) -> dict:
        out = {"total": self.total, "started": self.started, "ended": self.ended, "failed": self.failed}
        return {**out, "failed_task": self.failed_task} if self.failed_task else out


@dataclass(frozen=True)
class Limits:
    """The bounds a round applies (the deployment's BlockedJobTimeoutSeconds among them)."""

    blocked_job_timeout_seconds: int
    missing_grace_seconds: int = MISSING_GRACE_SECONDS
    missing_min_polls: int = MISSING_MIN_POLLS
    scheduler_outage_seconds: int = SCHEDULER_OUTAGE_SECONDS
    max_run_seconds: int | None = None   # MaxRunMinutes: from the run's `started_at`
    #: PollWindowSeconds: how long one round may watch on the head node before it reports
    #: (0: it looks once and the definition's Wait state waits `wait_seconds`, as before).
    poll_window_seconds: int = 0

    @property
    def watching(self) -> bool:
        return self.poll_window_seconds > 0


@dataclass(frozen=True)
class RetryRule:
    """A job's second chances: its config's `retries` and `retry_on` (exit codes as text,
    scheduler state words; empty: any failure)."""

    retries: int
    retry_on: tuple[str, ...] = ()


#: The reason of a job failed for being blocked: the scheduler would block it again, so it is
#: never retried.
BLOCKED_REASON = "cannot start by itself"


@dataclass(frozen=True)
class Decision:
    """The outcome of a round: the record to pass on, what changed, what comes next."""

    run: Run
    changed: tuple[str, ...]          # jobs whose state changed in this round
    action: Action
    wait_seconds: int
    failure: dict | None = None       # {"Error", "Cause"} when the action is FAIL


def iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(stamp: str | None) -> int | None:
    """The inverse of `iso` (None for None or a stamp `iso` did not write). fromisoformat, not
    strptime: a manifest write reads every job's two stamps, each round."""
    if not isinstance(stamp, str) or len(stamp) != 20 or stamp[10] != "T" or stamp[-1] != "Z":
        return None
    try:
        return int(datetime.fromisoformat(stamp[:-1]).replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        return None


#: What a job the scheduler did not mention counts as.
NOT_LISTED = JobStatus("", Category.MISSING, "")


# -- one job ---------------------------------------------------------------------------------

def needs_history(observation: JobObservation) -> bool:
    """Gone from the live queue (or shown done there) without a result: ask the scheduler's
    history (sacct, qacct, qstat -x) for its exit before judging it."""
    category = (observation.status or NOT_LISTED).category
    ended = observation.result or (observation.tasks is not None and (
        observation.tasks.failed or observation.tasks.ended >= observation.tasks.total))
    return not ended and category in (Category.MISSING, Category.SUCCEEDED)


def observe(job: JobRecord, name: str, observation: JobObservation, *, scheduler: str,
            now: int, limits: Limits) -> JobRecord:
    """The job after this round's observation. SchedulerError for a state the adapter does not
    know: never guessed to be anything."""
    if observation.started.isdigit():
        job = job.but(started=iso(int(observation.started)))
    tally = observation.tasks
    if tally is not None:
        job = job.but(tasks=tally.counts())
        if tally.failed:      # one failed task fails the job (the run then cancels the rest)
            ended = _ended_by_wrapper(job, tally.failed_result)
            return ended.but(state=JobState.FAILED, reason=(
                f"task {tally.failed_task} of {tally.total} failed; {tally.failed} failed, "
                f"{tally.ended} ended so far"))
        if tally.ended >= tally.total:
            return _ended_by_wrapper(job, f"0 0 {tally.last_ended}")
    elif observation.result:
        return _ended_by_wrapper(job, observation.result)
    status = observation.status or NOT_LISTED
    if tally is not None and status.category == Category.SUCCEEDED:
        # the scheduler says the array ended well, yet tasks recorded no end: never a success
        status = JobStatus(status.job_id, Category.FAILED, status.raw_state,
                           reason=f"{tally.total - tally.ended} of {tally.total} tasks recorded no exit code")
    category = status.category
    if category == Category.UNKNOWN:
        raise SchedulerError(
            f"job {name!r} ({scheduler} job {job.job_id}) is in state {status.raw_state!r}, "
            f"which the {scheduler} adapter does not know: refusing to guess",
            scheduler=scheduler, job_ids=[job.job_id] if job.job_id else ())
    if category in (Category.QUEUED, Category.RUNNING):
        reason = status.reason if status.reason not in NO_REASON else None
        job = job.but(state=JobState.PENDING if category == Category.QUEUED else JobState.RUNNING,
                      scheduler_state=status.raw_state, reason=reason)
        return _blocked(job, status, now, limits)
    if category in (Category.FAILED, Category.CANCELLED):
        # Ended without the wrapper recording it: killed, cancelled, node failure...
        return job.but(state=JobState.FAILED if category == Category.FAILED else JobState.CANCELLED,
                       scheduler_state=status.raw_state, exit_code=status.exit_code,
                       signal=status.signal, ended=iso(now), reason=_ended_outside(category, status))
    return _missing_for(job, status, scheduler, now, limits)


def _ended_outside(category: Category, status: JobStatus) -> str:
    """Why a job ended that its wrapper did not see end: the wrapper itself was stopped (killed
    by the scheduler, its node lost, cancelled by someone), so the scheduler's word is all
    there is, and "JobLaunchFailure" alone would explain nothing."""
    said = f"; the scheduler says: {status.reason}" if status.reason else ""
    if status.limit:
        return f"the scheduler ended it for passing its {status.limit}"
    if category == Category.CANCELLED:
        return f"cancelled outside this run before its script ended{said}"
    return f"stopped outside its script (the wrapper recorded no exit code){said}"


def _ended_by_wrapper(job: JobRecord, result: str) -> JobRecord:
    """The wrapper's "EXIT SIGNAL ENDED" line (jobscripts.wrapper_script writes it atomically).
    A line that is not that (a handler that wrote over its own result file) is a failure that
    says so, never a success."""
    cleared = dict(scheduler_state=None, missing_since=None, missing_polls=None)
    match = RESULT_LINE.fullmatch(result)
    if not match:
        why = f"its result file is not the wrapper's 'EXIT SIGNAL ENDED' line: {result[:80]!r}"
        return job.but(**cleared, state=JobState.FAILED, exit_code=None, signal=None, reason=why)
    code, signal, ended = match.groups()
    return job.but(**cleared, reason=None, exit_code=int(code), signal=int(signal) or None,
                   ended=iso(int(ended)) if ended else None,
                   state=JobState.SUCCEEDED if int(code) == 0 else JobState.FAILED)


def _blocked(job: JobRecord, status: JobStatus, now: int, limits: Limits) -> JobRecord:
    """A job the scheduler says cannot start by itself (held, impossible request, failed
    dependency) fails after a bounded time instead of being polled for ever."""
    if not status.blocked:
        return job.but(blocked_since=None)
    since = job.blocked_since if job.blocked_since is not None else now
    limit = limits.blocked_job_timeout_seconds
    if now - since >= limit:
        return job.but(state=JobState.FAILED, ended=iso(now), blocked_since=None,
                       reason=f"{BLOCKED_REASON} ({status.blocked}) and did not within {limit} s")
    return job.but(blocked_since=since)


def _missing_for(job: JobRecord, status: JobStatus, scheduler: str, now: int, limits: Limits) -> JobRecord:
    """MISSING, or SUCCEEDED without a result file: still finishing, for a bounded time."""
    since = job.missing_since if job.missing_since is not None else now
    polls = (job.missing_polls or 0) + 1
    if now - since >= limits.missing_grace_seconds and polls >= limits.missing_min_polls:
        return job.but(state=JobState.FAILED, scheduler_state=status.raw_state or "MISSING",
                       ended=iso(now),
                       reason=f"{scheduler} no longer knows the job and its wrapper recorded "
                              f"no exit code within {limits.missing_grace_seconds} s")
    return job.but(missing_since=since, missing_polls=polls)


# -- the run ---------------------------------------------------------------------------------

def apply_round(run: Run, observations: Mapping[str, JobObservation], *, scheduler: str,
                now: int, limits: Limits, scheduler_failure: str | None = None,
                retries: Mapping[str, RetryRule] | None = None) -> tuple[Run, list[str]]:
    """The record after one round over its active jobs, and the jobs that changed state.

    `scheduler_failure` is what the scheduler's status command printed when it failed (the
    controller down): the round then judges only jobs whose wrapper recorded a result, leaves
    the others as they were (not missing, not blocked: unknown), and notes the outage.
    A job that failed in a way its `retries` rule forgives becomes its next attempt, not yet
    submitted (`next_attempt`)."""
    run = run.copy()
    run.polls = (run.polls or 0) + 1
    if scheduler_failure is None:
        run.scheduler_silent_since = run.scheduler_said = None
    else:
        run.scheduler_silent_since = run.scheduler_silent_since if run.scheduler_silent_since is not None else now
        run.scheduler_said = " ".join(scheduler_failure.split())[:300] or "no output"
    changed = []
    for name in run.active_jobs():
        before = run.jobs[name]
        observation = observations.get(name, JobObservation())
        if scheduler_failure is not None and not observation.result:
            continue
        after = observe(before, name, observation, scheduler=scheduler, now=now, limits=limits)
        if retry_due(after, (retries or {}).get(name)):
            after = next_attempt(after)
        run.jobs[name] = after
        if after.state != before.state:
            changed.append(name)
    return run, changed


def retry_due(job: JobRecord, rule: RetryRule | None) -> bool:
    """Whether a job that ended now gets another attempt: it failed (not cancelled), after it
    was submitted, not for being blocked, with attempts left, in a way `retry_on` names (an
    exit code, also as 128 + the signal that killed it, or the scheduler's state word)."""
    if rule is None or job.state != JobState.FAILED or not job.job_id:
        return False
    if (job.attempt or 1) > rule.retries or (job.reason or "").startswith(BLOCKED_REASON):
        return False
    if not rule.retry_on:
        return True
    codes = {int(w) for w in rule.retry_on if w.isdigit()}
    if job.exit_code in codes or (job.signal and 128 + job.signal in codes):
        return True
    return (job.scheduler_state or "").split(" ")[0].upper() in rule.retry_on


def next_attempt(job: JobRecord) -> JobRecord:
    """The job as its next attempt, to be submitted: the attempt that ended kept in `attempts`
    (its files are moved to JOB/attempt-K/ on the head node when the next one is submitted)."""
    ended = {"attempt": job.attempt or 1, "job_id": job.job_id, "state": job.state.value,
             "exit_code": job.exit_code, "signal": job.signal, "scheduler_state": job.scheduler_state,
             "reason": job.reason, "started": job.started, "ended": job.ended}
    return JobRecord(attempt=(job.attempt or 1) + 1,
                     attempts=[*(job.attempts or []), {k: v for k, v in ended.items() if v is not None}])


def prerequisites_of(run: Run, prerequisites: Mapping[str, Sequence[str]] | None) -> Mapping[str, Sequence[str]]:
    """The plan's graph, or the order's own (a chain, or a fan) when none is given."""
    if prerequisites is not None:
        return prerequisites
    names = list(run.jobs)
    return graph.chain(names) if run.order == "sequential" else {name: () for name in names}


def ready_jobs(run: Run, prerequisites: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The jobs to submit now, in plan order: not started, each job they wait for succeeded (a
    sequential run's next job; a parallel run's jobs whose dependencies are done; a job's next
    attempt)."""
    graph_of = prerequisites_of(run, prerequisites)
    jobs = run.jobs
    return [name for name, job in jobs.items() if job.state == JobState.NOT_STARTED
            and all(jobs[p].state == JobState.SUCCEEDED for p in graph_of.get(name, ()))]


def blamed_jobs(run: Run, changed: Sequence[str], *, on_failure: str = "cancel",
                prerequisites: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The failed jobs the run's cause describes now (their stderr tails are read for it): the
    ones that failed in this round, or with on_failure "finish", once nothing is left to run,
    every failed job of the run."""
    if on_failure != "finish":
        return failed_jobs(run, changed)
    if run.active_jobs() or ready_jobs(run, prerequisites):
        return []
    return failed_jobs(run, list(run.jobs))


def ended_jobs(run: Run, names: Sequence[str]) -> list[str]:
    """Of `names`, the submitted jobs that have ended (their results are kept now)."""
    return [n for n in names if run.jobs[n].state.ended and run.jobs[n].job_id]


def failed_jobs(run: Run, names: Sequence[str]) -> list[str]:
    """Of `names`, the jobs that ended badly (their stderr tails go into the cause)."""
    return [n for n in names if run.jobs[n].state in (JobState.FAILED, JobState.CANCELLED)]


def decide(run: Run, changed: Sequence[str], *, wait_times: Mapping[str, int], scheduler: str,
           stderr_tails: Mapping[str, str] | None = None, now: int | None = None,
           limits_in_stderr: Mapping[str, str] | None = None,
           limits: Limits | None = None, prerequisites: Mapping[str, Sequence[str]] | None = None,
           on_failure: str = "cancel") -> Decision:
    """What comes next, given the record after a round (or a submission).

    The first job (in the round's order) that ended badly fails the run (with on_failure
    "finish": once nothing else can run, every failed job does); otherwise a scheduler silent
    for longer than the limit fails it; otherwise a run past MaxRunMinutes with jobs left fails
    (its teardown cancels them and keeps their results); otherwise jobs ready to start (their
    prerequisites succeeded) are submitted; otherwise jobs in flight mean waiting (never past
    that limit); otherwise done."""
    run = run.copy()
    blamed = blamed_jobs(run, changed, on_failure=on_failure, prerequisites=prerequisites)
    silent = (now - run.scheduler_silent_since
              if now is not None and limits is not None and run.scheduler_silent_since is not None else None)
    left = _time_left(run, now, limits)
    ready = ready_jobs(run, prerequisites)
    unfinished = run.active_jobs() or ready
    if blamed:
        run.phase = Phase.FAILED
        causes = [describe_failure(name, run.jobs[name], scheduler, (stderr_tails or {}).get(name, ""),
                                   (limits_in_stderr or {}).get(name)) for name in blamed]
        run.failure = {"Error": "JobFailed", "Cause": causes[0] if on_failure != "finish" else
                       _failures(run, blamed, causes, prerequisites_of(run, prerequisites))}
    elif silent is not None and silent >= limits.scheduler_outage_seconds:
        run.phase = Phase.FAILED
        run.failure = {"Error": "SchedulerUnavailable",
                       "Cause": f"{scheduler} has not answered for {silent} s (the limit is "
                                f"{limits.scheduler_outage_seconds} s): {run.scheduler_said}"}
    elif left is not None and left <= 0 and unfinished:
        run.phase = Phase.FAILED
        run.failure = {"Error": "BudgetReached" if _budget_binds(run, limits) else "RunTimeLimitReached",
                       "Cause": _over_time(run, limits, scheduler)}
    elif ready:
        run.phase = Phase.NEXT
    elif run.active_jobs():
        run.phase = Phase.WATCHING if limits is not None and limits.watching else Phase.RUNNING
    else:
        run.phase = Phase.SUCCEEDED
    run.wait_seconds = wait_seconds(run, wait_times)
    if left is not None and left > 0:
        run.wait_seconds = min(run.wait_seconds, left)     # the round that ends it comes on time
    return Decision(run, tuple(changed), PHASE_ACTIONS[run.phase], run.wait_seconds, run.failure)


#: A run whose failed jobs all go into its cause (on_failure "finish") describes this many in
#: full (Step Functions keeps 32,768 characters of a cause) and names the rest.
DESCRIBED_FAILURES = 10


def _failures(run: Run, names: Sequence[str], causes: Sequence[str],
              prerequisites: Mapping[str, Sequence[str]]) -> str:
    """The cause of a run that let its independent jobs finish: every failed job, and the jobs
    that never started because they wait for one."""
    waiting = graph.dependents(prerequisites, names)
    never = [n for n, job in run.jobs.items() if n in waiting and job.state == JobState.NOT_STARTED]
    failed = _names(list(names))
    text = (f"{failed[0].upper()}{failed[1:]} failed; the jobs that did not wait for "
            f"{'it' if len(names) == 1 else 'them'} ran to their end ([order] on_failure = finish)")
    if never:
        text += f", and {_names(never)} that did never started"
    each = max(500, 24_000 // min(len(causes), DESCRIBED_FAILURES))
    shown = [cause[:each] for cause in causes[:DESCRIBED_FAILURES]]
    more = (f"\n\n(and {len(causes) - DESCRIBED_FAILURES} more failed jobs: see the manifest)"
            if len(causes) > DESCRIBED_FAILURES else "")
    return text + ".\n\n" + "\n\n".join(shown) + more


def _time_left(run: Run, now: int | None, limits: Limits | None) -> int | None:
    """Seconds until MaxRunMinutes, or the execution's own budget (`max_hours`), whichever is
    sooner, is reached (None: no limit, or no start time known)."""
    bounds = [b for b in ((limits.max_run_seconds if limits else None), run.max_seconds) if b is not None]
    if now is None or not bounds or run.started_at is None:
        return None
    return run.started_at + min(bounds) - now


def _budget_binds(run: Run, limits: Limits) -> bool:
    """The execution's own budget, not the deployment's MaxRunMinutes, ended the run."""
    return run.max_seconds is not None and (limits.max_run_seconds is None or run.max_seconds <= limits.max_run_seconds)


def _over_time(run: Run, limits: Limits, scheduler: str) -> str:
    in_flight = ", ".join(f"{n!r} ({scheduler} job {run.jobs[n].job_id}, {run.jobs[n].state.value})"
                          for n in run.active_jobs())
    never = [n for n, j in run.jobs.items() if j.state == JobState.NOT_STARTED]
    if _budget_binds(run, limits):
        text = (f"The run reached its budget (max_hours = {run.max_seconds / 3600:g}, given when it was "
                f"started; it started at {iso(run.started_at)})")
    else:
        text = (f"The run reached its time limit (MaxRunMinutes={limits.max_run_seconds // 60}; it started "
                f"at {iso(run.started_at)})")
    if in_flight:
        text += f": jobs {in_flight} were still queued or running and are cancelled, their results so far kept"
    if never:
        text += f"; {_names(never)} never started"
    return text + "."


def wait_seconds(run: Run, wait_times: Mapping[str, int]) -> int:
    """The smallest wait_time among the jobs in flight (or of all jobs, when none is).

    A polling round costs 9 history events, and an execution that passes 25,000 fails.
    After POLLS_AT_WAIT_TIME rounds the interval doubles every POLLS_PER_DOUBLING rounds
    (up to an hour), so a run whose jobs outlast their wait_time budget slows its polling
    instead of failing: at wait_time 1 that starts after 25 minutes of polling; from there
    the interval reaches an hour within 600 rounds, which leaves about 700 hourly rounds.
    """
    waits = [wait_times[name] for name in run.active_jobs()]
    wait = min(waits) if waits else min(wait_times.values())
    polls = run.polls or 0
    if polls >= POLLS_AT_WAIT_TIME:
        wait = min(MAX_WAIT_SECONDS, wait * 2 ** ((polls - POLLS_AT_WAIT_TIME) // POLLS_PER_DOUBLING + 1))
    return wait


def next_look(run: Run, changed: Sequence[str], *, now: int, wait_times: Mapping[str, int],
              window_left: float, limits: Limits, scheduler: str, silent_at_start: bool = False,
              prerequisites: Mapping[str, Sequence[str]] | None = None, on_failure: str = "cancel") -> float:
    """Seconds until a watching round looks at its jobs again; 0: the round reports now.

    A round reports as soon as one of its jobs ended (its results are kept and, sequential, the
    next job goes out) or changed in any way but starting, or the run has something else to act
    on (a failure, a limit passed, an outage gone on too long), when the scheduler stopped or
    started answering (`silent_at_start`: it was silent when the round began), and when its
    window is spent. A start is reported once the job has run its `wait_time`, so RUNNING shows
    no later than without a window, and a job that ends sooner is reported once, at its end: a
    short sequential job costs one round (7 history events), not two. Between looks the round
    waits for a start or result file on the head node (`jobscripts.watch_script`), so a job's
    end is seen within a fraction of a second, and the scheduler is asked every `wait_time`, as
    without a window.
    """
    if window_left <= 0 or (run.scheduler_silent_since is not None) != silent_at_start:
        return 0
    starts = [name for name in changed if run.jobs[name].state == JobState.RUNNING]
    if len(starts) < len(changed):
        return 0
    start_reports = [_start_reported_in(run.jobs[name], wait_times[name], now) for name in starts]
    if 0 in start_reports:
        return 0
    probe = decide(run, changed, wait_times=wait_times, scheduler=scheduler, now=now, limits=limits,
                   prerequisites=prerequisites, on_failure=on_failure)
    if probe.action != Action.WAIT:
        return 0
    waits = [wait_times[name] for name in run.active_jobs()]
    look = min(min(waits), window_left)
    left = _time_left(run, now, limits)
    if left is not None:
        look = min(look, left)
    deadlines = [j.blocked_since + limits.blocked_job_timeout_seconds - now
                 for j in run.jobs.values() if j.state.active and j.blocked_since is not None]
    if run.scheduler_silent_since is not None:
        deadlines.append(run.scheduler_silent_since + limits.scheduler_outage_seconds - now)
    return max(0, min([look, *deadlines, *start_reports]))


def _start_reported_in(job: JobRecord, wait_time: int, now: int) -> int:
    """Seconds until a job seen starting in this round has run its wait_time (at once when its
    start time is unknown; never more than wait_time from now, whatever the head node's clock)."""
    since = epoch(job.started)
    return 0 if since is None else min(wait_time, max(0, since + wait_time - now))


def unkept_jobs(run: Run) -> list[str]:
    """Jobs that ended and whose results are not kept yet (a round that ran out of time left
    them to the next one)."""
    return [n for n, j in run.jobs.items() if j.state.ended and j.job_id and not j.kept]


def next_batch(run: Run, plan_order: Sequence[str],
               prerequisites: Mapping[str, Sequence[str]] | None = None) -> tuple[Run, list[str]]:
    """The jobs Submit Jobs sends now: those ready (`ready_jobs`: a sequential run's next one,
    a parallel run's jobs whose prerequisites succeeded, a job's next attempt); `next` says
    how far a sequential run has come."""
    run = run.copy()
    if prerequisites is None and run.order == "sequential":
        prerequisites = graph.chain(list(plan_order))
    ready = set(ready_jobs(run, prerequisites))
    batch = [name for name in plan_order if name in ready]
    if run.order == "sequential" and batch:
        run.next = max(run.next, list(plan_order).index(batch[-1]) + 1)
    return run, batch


def submitted(run: Run, job_ids: Mapping[str, str], *, wait_times: Mapping[str, int],
              watching: bool = False, source_versions: Mapping[str, str] | None = None) -> Run:
    """The record once the scheduler accepted these jobs (`watching`: the next round waits on
    the head node, so the definition goes straight to it; `source_versions`: what the s3_uri
    jobs among them were staged from)."""
    run = run.copy()
    for name, job_id in job_ids.items():
        version = (source_versions or {}).get(name, run.jobs[name].source_version)
        run.jobs[name] = run.jobs[name].but(job_id=job_id, state=JobState.PENDING, source_version=version)
    run.phase = Phase.WATCHING if watching else Phase.RUNNING
    run.wait_seconds = wait_seconds(run, wait_times)
    return run


def failed_alone(run: Run, refused: Mapping[str, str], *, now: int) -> Run:
    """Jobs whose files could not be staged or that the scheduler refused ({job: why}), with
    [order] on_failure = finish: each fails alone (never retried), the run goes on."""
    run = run.copy()
    for name, why in refused.items():
        run.jobs[name] = run.jobs[name].but(state=JobState.FAILED, reason=why, ended=iso(now))
    return run


def failed_before_submit(run: Run, name: str, why: str, *, now: int) -> Run:
    """A job whose files could not be staged, or that the scheduler refused, fails the run."""
    run = run.copy()
    run.jobs[name] = run.jobs[name].but(state=JobState.FAILED, reason=why, ended=iso(now))
    run.phase = Phase.FAILED
    run.failure = {"Error": "JobFailed", "Cause": f"Job {name!r} failed before submission: {why}"}
    return run


@dataclass(frozen=True)
class Cancellation:
    """What cancelling a run's leftover jobs came to: {name: scheduler id} of the jobs the
    scheduler confirmed ended, and of those it did not (what it said; `silent` when it did not
    answer at all: an outage, worth waiting out)."""

    confirmed: Mapping[str, str]
    unconfirmed: Mapping[str, str]
    said: str = ""
    silent: bool = False


def still_running(status: JobStatus | None) -> bool:
    """After a cancel: the scheduler still shows the job queued or running (Slurm's COMPLETING
    among them). Cancelled, ended or unknown to it (gone) is confirmed; Grid Engine's `d` states
    count as cancelled (a job being deleted cannot run on, even on a lost execution host)."""
    return status is not None and status.category in (Category.QUEUED, Category.RUNNING)


def cancelled(run: Run, confirmed: Sequence[str], unconfirmed: Mapping[str, str] | None = None, *,
              said: str = "", now: int) -> Run:
    """The record after Cancel Jobs: every active job, and every job found submitted on the head
    node though the record never saw its id (an attempt died reporting it), is CANCELLED,
    except those whose cancel the scheduler did not confirm: they stay as they were, with the
    reason, for Release Head Node to cancel again and report."""
    run = run.copy()
    unconfirmed = unconfirmed or {}
    for name, job in run.jobs.items():
        if name in unconfirmed:
            run.jobs[name] = job.but(state=job.state if job.state.active else JobState.PENDING,
                                     job_id=job.job_id or unconfirmed[name],
                                     reason=f"its cancel was not confirmed ({said or 'no answer'})")
        elif job.state.active or (job.state == JobState.NOT_STARTED and name in confirmed):
            run.jobs[name] = job.but(state=JobState.CANCELLED, ended=iso(now))
    return run


def release_note(run: Run, *, scheduler: str, unreachable: str | None = None,
                 unconfirmed: Mapping[str, str] | None = None, said: str = "",
                 cluster_deleted: bool) -> str | None:
    """What Release Head Node could not do, as the sentences the definition adds to the run's
    cause (None when it did everything): the head node unreachable, results not kept, jobs that
    may still be running and where."""
    parts = []
    if unreachable:
        parts.append(f"The head node could not be reached to keep the last results and clean up: {unreachable}.")
    started = [n for n, j in run.jobs.items() if j.job_id]
    # (a job that never started has nothing to keep; one in flight may have started since)
    lost = [n for n in started if not run.jobs[n].kept and (run.jobs[n].started or run.jobs[n].state.active)]
    summary = run.results or {}
    if unreachable and lost:
        kept = [n for n in started if run.jobs[n].kept]
        where = f" (kept under {summary['prefix']})" if kept and summary.get("prefix") else ""
        parts.append(f"Not kept: the results of {_names(lost)}; kept: those of {_names(kept) if kept else 'no job'}{where}.")
    if summary.get("not_kept_count"):
        parts.append(f"{summary['not_kept_count']} result files of {_names(list(summary.get('not_kept') or []))} "
                     f"could not be kept (listed in {summary.get('manifest')}).")
    running = dict(unconfirmed or {})
    if unreachable:
        running.update({n: j.job_id for n, j in run.jobs.items() if j.state.active and j.job_id})
    if running:
        jobs = ", ".join(f"{n!r} ({scheduler} job {i})" for n, i in sorted(running.items()))
        why = f"{scheduler} did not confirm their cancel ({said or 'no answer'})" if not unreachable else \
            "they were not cancelled"
        if cluster_deleted:
            parts.append(f"Jobs {jobs} may have been running until the cluster was deleted: {why}.")
        else:
            parts.append(f"Jobs {jobs} may still be running on the head node: {why}; the run's folder "
                         f"{run.run_dir} is kept until they are gone (`stepcluster cleanup {run.execution}` "
                         "cancels them and removes it).")
    return " ".join(parts) or None


def _names(names: Sequence[str], most: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return f"jobs {shown}" + (f" and {len(names) - most} more" if len(names) > most else "") \
        if len(names) != 1 else f"job {shown}"


def found_on_head_node(found: Mapping[str, tuple[str | None, str]], *, now: int) -> dict[str, JobRecord]:
    """The jobs of a run whose record is gone (the cleanup of an aborted execution), from what
    its folder shows: {name: (scheduler id or None, the wrapper's result line or "")}. A job
    with a result ended with it; one without was still queued or running, and is being
    cancelled by the cleanup."""
    jobs = {}
    for name, (job_id, result) in found.items():
        job = JobRecord(job_id=job_id)          # its state: from the result, or CANCELLED
        if result:
            jobs[name] = _ended_by_wrapper(job, result)
        else:
            jobs[name] = job.but(state=JobState.CANCELLED, ended=iso(now),
                                 reason="cancelled by the cleanup after the execution ended")
    return jobs


def _attempt_line(attempt: dict, scheduler: str) -> str:
    how = (f"killed by signal {attempt['signal']}" if attempt.get("signal") else
           f"exit code {attempt['exit_code']}" if attempt.get("exit_code") is not None else
           attempt.get("scheduler_state") or attempt.get("state", "?"))
    return f"{attempt.get('attempt', '?')} ({scheduler} job {attempt.get('job_id')}) {how}"


def describe_failure(name: str, job: JobRecord, scheduler: str, stderr_tail: str,
                     limit: str | None = None) -> str:
    """The failure cause: job, scheduler id, final state, exit code or signal, the limit it
    passed (`limit`, read from its stderr by the adapter), stderr tail."""
    if job.state == JobState.FAILED and job.reason and job.job_id is None and job.exit_code is None \
            and job.started is None and not stderr_tail.strip():     # never reached the scheduler
        return f"Job {name!r} failed before submission: {job.reason}"
    parts = [f"Job {name!r} ({scheduler} job {job.job_id}) ended {job.state.value}"]
    if job.scheduler_state:
        parts.append(f"(scheduler state {job.scheduler_state})")
    if job.signal:
        parts.append(f"killed by signal {job.signal}")
    elif job.exit_code is not None:
        parts.append(f"with exit code {job.exit_code}")
    text = " ".join(parts)
    if job.attempt:
        text += f" on its attempt {job.attempt}"
    if job.reason:
        text += f"; reason: {job.reason}"
    if limit and "limit" not in (job.reason or ""):
        text += f"; it passed its {limit}"
    if job.attempts:
        text += "; earlier attempts: " + "; ".join(_attempt_line(a, scheduler) for a in job.attempts)
    if stderr_tail.strip():
        text += f"\nLast lines of its stderr:\n{stderr_tail.strip()}"
    return text
