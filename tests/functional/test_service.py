"""RunService's decisions, with the bash it sends run by a real local bash (no SSH) and a fake
scheduler whose answers the test writes: the poll's rules one by one."""

import dataclasses
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from functional.test_results import LocalStream
from stepcluster import adoption, decisions, headnode, jobscripts
from stepcluster import service as service_module
from stepcluster.config import parse_jobs_config
from stepcluster.errors import HeadNodeError, InputError, PlanError, SchedulerError, TransientSSHError
from stepcluster.plan import build_plan
from stepcluster.record import Run
from stepcluster.remote.ssh import CommandResult
from stepcluster.runtime import run_task
from stepcluster.directives import DirectiveSyntax
from stepcluster.schedulers import Category, JobStatus, Scheduler
from stepcluster.settings import Settings


class FakeScheduler(Scheduler):
    """Answers from a file the test writes: one `ID STATE [EXIT]` line per job it knows."""

    name = "fake"
    UNAVAILABLE = re.compile("controller down")
    STATES = {"Q": Category.QUEUED, "R": Category.RUNNING, "OK": Category.SUCCEEDED,
              "BAD": Category.FAILED, "GONE": Category.CANCELLED}

    def __init__(self, folder: Path):
        self.status_file = folder / "status.txt"
        self.status_file.write_text("")
        self.cancelled = folder / "cancelled.txt"
        self.submitted = folder / "submitted.txt"   # one line per submission: its name
        self.known = folder / "known.txt"           # "ID NAME": what it would list by name
        self.known.write_text("")
        self.down = folder / "down"                 # exists: the controller does not answer

    DIRECTIVES = DirectiveSyntax("#FAKE", whole_file=False, getopt=True)

    def probe_argv(self):
        return ["true"]

    def resource_options(self, resources):
        return [f"--fake-{key}={value}" for key, value in resources.to_dict().items() if key != "scheduler_options"]

    def submit_argv(self, script, *, job_name, workdir, stdout, stderr, request=()):
        # id-JOB for a job's first submission, id-JOB-N for its N-th: a second submission shows;
        # while the test has made `down` exist, the "controller" does not answer
        short = job_name.rsplit("-", 1)[0]
        return ["bash", "-c", f'[ -e {self.down} ] && {{ echo "fake: controller down" >&2; exit 1; }}; '
                'echo "$2" >> "$1"; c=$(grep -cx -- "$2" "$1"); id="id-$3"; '
                '[ "$c" = 1 ] || id="$id-$c"; echo "$id $2" >> "$4"; echo "$id"',
                "submit", str(self.submitted), job_name, short, str(self.known)]

    def submissions(self):
        return self.submitted.read_text().split() if self.submitted.exists() else []

    def recover_argv(self, job_name):
        return ["cat", str(self.known)]

    def parse_recover(self, out, job_name):
        if out.exit_code != 0:
            raise SchedulerError(out.stderr)
        return [i for i, n in (line.split() for line in out.stdout.splitlines()) if n == job_name]

    def parse_submit(self, out):
        return out.stdout.strip()

    def status_argv(self, job_ids):
        return ["cat", str(self.status_file)]

    def parse_status(self, out, job_ids):
        if out.exit_code != 0:      # as the real adapters: a failing status command is an error
            raise SchedulerError(f"fake status failed: {out.stderr}", scheduler=self.name, output=out)
        found = {}
        for line in out.stdout.splitlines():
            job_id, state, *rest = line.split()
            if rest and rest[0] == "held":   # "ID Q held": queued, cannot start by itself
                found[job_id] = JobStatus(job_id, self.categorize(state), state, blocked="held by admin")
                continue
            found[job_id] = JobStatus(job_id, self.categorize(state), state,
                                      int(rest[0]) if rest else None)
        return {i: found.get(i, JobStatus(i, Category.MISSING, "")) for i in job_ids}

    def cancel_argv(self, job_ids):
        return ["bash", "-c", f'[ -e {self.down} ] && {{ echo "fake: controller down" >&2; exit 1; }}; '
                f'echo "$@" >> {self.cancelled}', "cancel", *job_ids]


class LocalBash(LocalStream):
    """Runs what the service would send over SSH in a local bash (results stream as in
    test_results); `unreachable`: connecting
    fails, as to a head node whose sshd is gone."""

    def __init__(self, unreachable=False):
        self.scripts = []
        self.unreachable = unreachable

    def connect(self):
        if self.unreachable:
            raise TransientSSHError("cannot reach head node hpc@10.0.0.9:22: [Errno 111] Connection refused")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def run(self, argv, *, stdin=None, check=True, timeout=60):
        done = subprocess.run(argv, input=stdin if isinstance(stdin, bytes) else (stdin or "").encode(),
                              capture_output=True, timeout=timeout)
        return CommandResult(" ".join(argv), done.stdout.decode(), done.stderr.decode(), done.returncode)

    def run_script(self, script, *, check=True, timeout=60):
        self.scripts.append(script)
        done = subprocess.run(["bash", "-s"], input=script.encode(), capture_output=True, timeout=timeout)
        return CommandResult(script, done.stdout.decode(), done.stderr.decode(), done.returncode)


class AsTheStateMachineCalls:
    """A RunService called the way the handlers call it: the record as JSON in and out, parsed
    and dumped by the handlers' own `run_task`. Its parts (settings, plan, keys, backend,
    connect, scheduler) can be read and replaced as on the service."""

    _WIRING = ("settings", "plan", "keys", "backend")
    _HEAD_NODE = ("connect", "scheduler")

    def __init__(self, svc):
        object.__setattr__(self, "service", svc)

    def __getattr__(self, name):
        svc = self.service
        if name in service_module.RUN_TASKS:
            return lambda run: run_task(name, run, svc)
        if name in self._WIRING:
            return getattr(svc.wiring, name)
        return getattr(svc, name)

    def __setattr__(self, name, value):
        owner = (self.service.wiring if name in self._WIRING else
                 self.service.head_node if name in self._HEAD_NODE else self.service)
        setattr(owner, name, value)


def local_service(tmp_path, plan, scheduler, poll_window_seconds=0, **settings):
    """A RunService for an existing Slurm head node whose SSH is a local bash and whose
    scheduler is `scheduler`; its rounds look once (no poll window) unless told."""
    settings = Settings("existing", "slurm", "127.0.0.1", 22, "hpc", "SHA256:x", "secret",
                        remote_root=str(tmp_path / "remote"), poll_window_seconds=poll_window_seconds,
                        **settings)
    svc = AsTheStateMachineCalls(service_module.RunService(settings, plan=plan, private_key=lambda _: "key"))
    svc.connect = lambda run: LocalBash()
    svc.scheduler = lambda run: scheduler
    return svc


@pytest.fixture
def world(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    for name in ("a", "b", "c"):
        (jobs / name).mkdir(parents=True)
        (jobs / name / "run.sh").write_text("true\n")

    def make(order="sequential", poll_window_seconds=0, **settings):
        text = f"[order]\n{order} = a, b, c\n" + "".join(
            f"\n[job {n}]\nhandler = run.sh\nlocal_path = jobs/{n}\nwait_time = {w}\n"
            for n, w in (("a", 5), ("b", 2), ("c", 9)))
        plan = build_plan(parse_jobs_config(text, str(tmp_path / "jobs.ini"), tmp_path), tmp_path / "plan")
        scheduler = FakeScheduler(tmp_path)
        svc = local_service(tmp_path, plan, scheduler, poll_window_seconds, **settings)
        run = svc.create_cluster({"input": {"cluster_name": "c1"}, "execution": "exec-1",
                                  "plan_digest": plan.digest})
        return svc, scheduler, svc.prepare_head_node(run)

    return make


def finish(run, name, code, signal=0, ended=1_700_000_000):
    """What the job's wrapper leaves: its start and result files, each followed by its marker."""
    job_dir = Path(run["cluster"]["run_dir"]) / "jobs" / name
    events = Path(jobscripts.events_dir(run["cluster"]["run_dir"]))
    attempt = ((run.get("jobs") or {}).get(name) or {}).get("attempt") or 1   # (a wide run's are in the bucket)
    (job_dir / "started").write_text(f"{ended - 5}\n")
    (events / f"{name}.{attempt}.started").write_text("")
    (job_dir / "result").write_text(f"{code} {signal} {ended}\n")
    (events / f"{name}.{attempt}.ended").write_text("")


def test_create_refuses_bad_input_and_a_stale_plan(world):
    svc, _, run = world()
    with pytest.raises(InputError, match="cluster_name"):
        svc.create_cluster({"input": ["c1"], "execution": "e", "plan_digest": svc.plan.digest})
    with pytest.raises(PlanError, match="preprocess"):
        svc.create_cluster({"input": {"cluster_name": "c1"}, "execution": "e", "plan_digest": "old"})


def test_sequential_advances_one_job_at_a_time_at_its_own_wait_time(world):
    svc, scheduler, run = world()
    assert Path(run["cluster"]["run_dir"], "jobs").is_dir()
    run = svc.submit_jobs(run)
    assert run["jobs"]["a"] == {"state": "PENDING", "job_id": "id-a"}
    assert run["jobs"]["b"] == {"state": "NOT_STARTED"}
    assert run["wait_seconds"] == 5
    scheduler.status_file.write_text("id-a R\n")
    run = svc.poll_jobs(run)
    assert (run["phase"], run["jobs"]["a"]["state"]) == ("RUNNING", "RUNNING")
    finish(run, "a", 0)
    run = svc.poll_jobs(run)   # a succeeded: b is submitted in the same round
    assert run["phase"] == "RUNNING" and run["jobs"]["a"]["state"] == "SUCCEEDED"
    assert run["jobs"]["a"]["ended"] == "2023-11-14T22:13:20Z"
    assert run["jobs"]["b"]["state"] == "PENDING" and run["wait_seconds"] == 2
    assert run["jobs"]["c"] == {"state": "NOT_STARTED"}


def test_a_watching_round_reports_when_a_job_ends_not_at_its_window(world):
    svc, scheduler, run = world(poll_window_seconds=60)
    run = svc.submit_jobs(run)
    assert run["phase"] == "WATCHING"       # the definition goes straight to Poll Jobs
    scheduler.status_file.write_text("id-a Q\n")
    threading.Timer(1.0, finish, (run, "a", 0)).start()
    began = time.monotonic()
    run = svc.poll_jobs(run)
    took = time.monotonic() - began
    assert run["jobs"]["a"]["state"] == "SUCCEEDED" and run["jobs"]["b"]["state"] == "PENDING"
    assert run["phase"] == "WATCHING"
    assert 0.9 < took < 4                 # seen at its result file (a 0.2 s tick), not after 5 s or 60 s
    assert run["polls"] == 2              # the scheduler asked at the start and after the end


def test_a_watching_round_reports_a_start_once_it_has_run_its_wait_time_then_waits_its_window(world):
    svc, scheduler, run = world("parallel", poll_window_seconds=5)
    run = svc.submit_jobs(run)
    jobs = Path(run["cluster"]["run_dir"], "jobs")
    scheduler.status_file.write_text("id-a Q\nid-b Q\nid-c Q\n")
    # b (wait_time 2) starts 0.5 s into the round: the round reports it once it has run 2 s (a
    # job ending sooner would cost one round, not two), not at once and not at the window's end
    threading.Timer(0.4, scheduler.status_file.write_text, ("id-a Q\nid-b R\nid-c Q\n",)).start()
    events = Path(jobscripts.events_dir(run["cluster"]["run_dir"]))
    threading.Timer(0.5, lambda: ((jobs / "b" / "started").write_text(f"{time.time():.0f}\n"),
                                  (events / "b.1.started").write_text(""))).start()
    began = time.monotonic()
    run = svc.poll_jobs(run)
    took = time.monotonic() - began
    assert run["jobs"]["b"]["state"] == "RUNNING" and run["jobs"]["a"]["state"] == "PENDING"
    assert 1.4 <= took < 4, took
    scheduler.status_file.write_text("id-a R\nid-b R\nid-c R\n")
    for name in ("a", "c"):
        (jobs / name / "started").write_text("1700000000\n")   # long ago: reported at once
    run = svc.poll_jobs(run)
    assert {j["state"] for j in run["jobs"].values()} == {"RUNNING"}
    polls = run["polls"]
    began = time.monotonic()
    run = svc.poll_jobs(run)               # nothing changes: the whole window
    took = time.monotonic() - began
    assert 4 <= took < 8
    assert run["phase"] == "WATCHING" and {j["state"] for j in run["jobs"].values()} == {"RUNNING"}
    # at 0, 2 and 4 s (b's wait_time is 2) and at the window's end: about one look per wait_time
    # (a loaded machine may add one), never one per 0.2 s tick
    assert polls + 3 <= run["polls"] <= polls + 5


def test_a_watching_round_stops_when_the_run_is_cleaned_up_under_it(world):
    svc, scheduler, run = world(poll_window_seconds=60)
    run = svc.submit_jobs(run)
    scheduler.status_file.write_text("id-a Q\n")
    threading.Timer(0.5, shutil.rmtree, (run["cluster"]["run_dir"],)).start()
    began = time.monotonic()
    with pytest.raises(HeadNodeError, match="gone from the head node"):
        svc.poll_jobs(run)
    assert time.monotonic() - began < 4
    assert scheduler.submissions() == [s for s in scheduler.submissions() if s.startswith("a-")]


def test_a_watching_round_leaves_late_work_to_submit_jobs_and_the_next_round(world, monkeypatch):
    monkeypatch.setattr(headnode, "ROUND_WORK_SECONDS", 0)     # as if the end came late in the window
    svc, scheduler, run = world(poll_window_seconds=60)
    run = svc.submit_jobs(run)
    scheduler.status_file.write_text("id-a R\n")
    finish(run, "a", 0)
    kept = []
    monkeypatch.setattr(svc.head_node, "_keep", lambda ssh, run, names: kept.append(names) or run)
    run = svc.poll_jobs(run)
    assert run["phase"] == "NEXT" and run["jobs"]["b"]["state"] == "NOT_STARTED" and kept == []
    run = svc.submit_jobs(run)
    assert run["jobs"]["b"]["state"] == "PENDING"
    scheduler.status_file.write_text("id-b R\n")
    finish(run, "b", 0)
    svc.poll_jobs(run)
    assert kept[0] == ["a"]               # the next round keeps what the last one left first


def test_the_result_file_wins_over_what_the_scheduler_shows(world):
    svc, scheduler, run = world("parallel")
    run = svc.submit_jobs(run)
    assert run["wait_seconds"] == 2  # the smallest wait_time in flight
    scheduler.status_file.write_text("id-a R\nid-b R\nid-c R\n")
    finish(run, "a", 0)
    run = svc.poll_jobs(run)
    assert run["jobs"]["a"]["state"] == "SUCCEEDED"


def test_a_failure_names_the_job_its_id_exit_code_and_stderr(world):
    svc, scheduler, run = world("parallel")
    run = svc.submit_jobs(run)
    Path(run["cluster"]["run_dir"], "jobs", "b", "stderr").write_text("line1\nFATAL: out of cheese\n")
    finish(run, "b", 7)
    scheduler.status_file.write_text("id-a R\nid-c Q\n")
    run = svc.poll_jobs(run)
    assert run["phase"] == "FAILED"
    cause = run["failure"]["Cause"]
    assert "'b'" in cause and "id-b" in cause and "exit code 7" in cause and "out of cheese" in cause


def test_a_job_killed_by_a_signal_says_so(world):
    svc, scheduler, run = world()
    run = svc.submit_jobs(run)
    finish(run, "a", 137, signal=9)
    run = svc.poll_jobs(run)
    assert run["jobs"]["a"]["signal"] == 9 and "signal 9" in run["failure"]["Cause"]


def test_a_job_ended_by_the_scheduler_without_a_result_is_failed_with_its_state(world):
    svc, scheduler, run = world()
    run = svc.submit_jobs(run)
    scheduler.status_file.write_text("id-a BAD 1\n")
    run = svc.poll_jobs(run)
    assert run["jobs"]["a"]["state"] == "FAILED"
    assert "scheduler state BAD" in run["failure"]["Cause"]


def test_an_unknown_scheduler_state_fails_the_poll_with_the_raw_text(world):
    svc, scheduler, run = world()
    run = svc.submit_jobs(run)
    scheduler.status_file.write_text("id-a WEIRD\n")
    with pytest.raises(SchedulerError, match="'WEIRD'"):
        svc.poll_jobs(run)


def test_a_job_the_scheduler_forgot_is_waited_for_then_declared_lost(world, monkeypatch):
    svc, scheduler, run = world()
    run = svc.submit_jobs(run)
    clock = [1_000_000]
    monkeypatch.setattr(headnode, "_now", lambda: clock[0])
    for _ in range(3):           # gone from the queue, no result yet: still finishing
        run = svc.poll_jobs(run)
        assert run["jobs"]["a"]["state"] == "PENDING" and run["phase"] == "RUNNING"
        clock[0] += 10
    clock[0] += decisions.MISSING_GRACE_SECONDS
    run = svc.poll_jobs(run)
    assert run["jobs"]["a"]["state"] == "FAILED"
    assert "no longer knows" in run["failure"]["Cause"]


def test_a_late_result_after_a_missing_round_still_counts(world):
    svc, scheduler, run = world()
    run = svc.submit_jobs(run)
    run = svc.poll_jobs(run)
    assert run["jobs"]["a"]["missing_polls"] == 1
    finish(run, "a", 0)
    run = svc.poll_jobs(run)
    assert run["jobs"]["a"]["state"] == "SUCCEEDED" and "missing_polls" not in run["jobs"]["a"]


def test_submit_twice_does_not_submit_twice(world):
    svc, scheduler, run = world("parallel")
    first = svc.submit_jobs(run)
    retried = svc.submit_jobs(run)  # a retried Lambda sees the same input
    # the fake gives a second submission of a job another id (id-a-2): the ids would differ
    assert first["jobs"] == retried["jobs"]
    assert {n: j["job_id"] for n, j in retried["jobs"].items()} == {"a": "id-a", "b": "id-b", "c": "id-c"}
    assert len(scheduler.submissions()) == 3 and len(set(scheduler.submissions())) == 3
    rcs = sorted(Path(run["cluster"]["run_dir"], "jobs").glob("*/submit.rc"))
    assert len(rcs) == 3


def crash_after_the_first_submit(monkeypatch):
    """The next submit script dies right after the scheduler accepted its first job, before
    that job's submit.rc is written (as when the Lambda dies mid-script)."""
    original = headnode.jobscripts.submit_script

    def crashing(run_dir, submissions, **options):
        script = original(run_dir, submissions, **options)
        marker = "; echo $? > "
        assert marker in script
        monkeypatch.setattr(headnode.jobscripts, "submit_script", original)   # once
        return script.replace(marker, "; exit 1; echo $? > ", 1)
    monkeypatch.setattr(headnode.jobscripts, "submit_script", crashing)


@pytest.mark.parametrize("order", ["sequential", "parallel"])
def test_a_retry_after_a_crash_between_submit_and_submit_rc_adopts_the_first_job(world, monkeypatch, order):
    svc, scheduler, run = world(order)
    crash_after_the_first_submit(monkeypatch)
    with pytest.raises(SchedulerError, match="reported nothing"):
        svc.submit_jobs(run)
    job_dir = Path(run["cluster"]["run_dir"], "jobs", "a")
    assert scheduler.submissions() and not (job_dir / "submit.rc").exists()   # accepted, not recorded
    retried = svc.submit_jobs(run)                # the Lambda's retry, same input
    expected = 1 if order == "sequential" else 3
    assert len(scheduler.submissions()) == expected, scheduler.submissions()   # nothing submitted twice
    assert retried["jobs"]["a"] == {"state": "PENDING", "job_id": "id-a"}
    assert (job_dir / "submit.rc").read_text().strip() == "0"
    assert svc.submit_jobs(run)["jobs"] == retried["jobs"]       # and again: still the same
    assert len(scheduler.submissions()) == expected


def test_a_job_whose_submission_the_scheduler_does_not_know_is_submitted_once(world):
    """Intent written, then the attempt died before the submit command ran."""
    svc, scheduler, run = world()
    job_dir = Path(run["cluster"]["run_dir"], "jobs", "a")
    job_dir.mkdir(parents=True)
    (job_dir / "submit.intent").write_text("")
    run = svc.submit_jobs(run)
    assert run["jobs"]["a"] == {"state": "PENDING", "job_id": "id-a"}
    assert len(scheduler.submissions()) == 1


def test_a_scheduler_that_cannot_tell_is_never_submitted_to_again(world):
    svc, scheduler, run = world()
    job_dir = Path(run["cluster"]["run_dir"], "jobs", "a")
    job_dir.mkdir(parents=True)
    (job_dir / "submit.intent").write_text("")
    scheduler.known.unlink()                      # the look-up by name fails
    with pytest.raises(SchedulerError):
        svc.submit_jobs(run)
    assert scheduler.submissions() == []


def test_cancel_finds_a_job_whose_submission_crashed_by_its_name(world, monkeypatch):
    svc, scheduler, run = world()
    crash_after_the_first_submit(monkeypatch)
    with pytest.raises(SchedulerError):
        svc.submit_jobs(run)
    svc.cancel_jobs(run)                          # retries exhausted: the failure path
    assert scheduler.cancelled.read_text().split() == ["id-a"]


def test_a_missing_handler_fails_before_anything_is_submitted(world):
    svc, scheduler, run = world("parallel")
    # A plan whose handler is not in the package (preprocess refuses this; staging checks again).
    jobs = list(svc.plan.jobs)
    jobs[1] = dataclasses.replace(jobs[1], handler="nope.sh")
    svc.plan = dataclasses.replace(svc.plan, jobs=tuple(jobs))
    run = svc.submit_jobs(run)
    assert run["phase"] == "FAILED" and "'nope.sh'" in run["failure"]["Cause"]
    assert {j["state"] for n, j in run["jobs"].items() if n != "b"} == {"NOT_STARTED"}
    assert not list(Path(run["cluster"]["run_dir"], "jobs").glob("*/submit.rc"))


def test_with_on_failure_finish_a_job_that_cannot_be_staged_fails_alone(world, monkeypatch):
    svc, scheduler, run = world("parallel")
    jobs = list(svc.plan.jobs)
    jobs[1] = dataclasses.replace(jobs[1], handler="nope.sh")
    jobs[2] = dataclasses.replace(jobs[2], handler="nope.sh")
    svc.plan = dataclasses.replace(svc.plan, jobs=tuple(jobs), on_failure="finish")
    staged = []
    add_job_files = headnode.staging.add_job_files
    monkeypatch.setattr(headnode.staging, "add_job_files",
                        lambda tar, plan, job, **kw: staged.append(job.name) or add_job_files(tar, plan, job, **kw))
    run = svc.submit_jobs(run)
    assert run["phase"] == "RUNNING" and run["jobs"]["b"]["state"] == run["jobs"]["c"]["state"] == "FAILED"
    assert [s.rsplit("-", 1)[0] for s in scheduler.submissions()] == ["a"]   # the other went on (by submission name)
    assert "'nope.sh'" in run["jobs"]["b"]["reason"] and "job_id" not in run["jobs"]["b"]
    assert staged == ["a", "b", "c"]           # the batch staged once, not again after each failure

    # every job of the batch failing, with nothing else in flight: Submit Jobs ends the run
    svc, scheduler, run = world("parallel")
    svc.plan = dataclasses.replace(svc.plan, on_failure="finish", jobs=tuple(
        dataclasses.replace(job, handler="nope.sh") for job in svc.plan.jobs))
    before = scheduler.submissions()
    run = svc.submit_jobs(run)
    assert run["phase"] == "FAILED" and scheduler.submissions() == before   # nothing more submitted
    assert run["failure"]["Cause"].startswith("Jobs 'a', 'b', 'c' failed; the jobs that did not wait for them")
    assert "Job 'a' failed before submission: handler 'nope.sh' is not among" in run["failure"]["Cause"]


def test_cancel_finds_jobs_the_payload_does_not_know(world):
    svc, scheduler, run = world("parallel")
    submitted = svc.submit_jobs(run)          # the Lambda "crashed" before reporting this back
    cancelled = svc.cancel_jobs(run)          # so the state machine still has the old record
    assert sorted(scheduler.cancelled.read_text().split()) == ["id-a", "id-b", "id-c"]
    assert {j["state"] for j in cancelled["jobs"].values()} == {"CANCELLED"}
    assert submitted["phase"] == "RUNNING"


def test_release_removes_the_run_folder_and_is_idempotent(world):
    svc, scheduler, run = world()
    run = svc.submit_jobs(run)
    finish(run, "a", 0)
    released = svc.release_head_node(run)
    assert not Path(run["cluster"]["run_dir"]).exists()
    assert released["cluster"]["run_dir_removed"] is True
    assert svc.release_head_node(run)["cluster"]["run_dir_removed"] is True
    assert not scheduler.cancelled.exists()   # a finished job is not a leftover
    assert svc.delete_cluster(released)["cluster"]["status"] == "RELEASED"


def test_keep_cluster_must_be_a_boolean(world):
    svc, _, _ = world()
    with pytest.raises(InputError, match="keep_cluster"):
        svc.create_cluster({"input": {"cluster_name": "c1", "keep_cluster": "yes"}, "execution": "e",
                            "plan_digest": svc.plan.digest})


def test_a_job_that_cannot_start_by_itself_fails_after_the_bounded_time(world, monkeypatch):
    svc, scheduler, run = world()
    run = svc.submit_jobs(run)
    clock = [1_000_000]
    monkeypatch.setattr(headnode, "_now", lambda: clock[0])
    scheduler.status_file.write_text("id-a Q held\n")
    run = svc.poll_jobs(run)
    assert run["jobs"]["a"]["state"] == "PENDING" and run["phase"] == "RUNNING"
    scheduler.status_file.write_text("id-a Q\n")     # released: the clock starts again
    run = svc.poll_jobs(run)
    assert "blocked_since" not in run["jobs"]["a"]
    scheduler.status_file.write_text("id-a Q held\n")
    run = svc.poll_jobs(run)
    clock[0] += svc.settings.blocked_job_timeout_seconds
    run = svc.poll_jobs(run)
    assert run["phase"] == "FAILED" and run["jobs"]["a"]["state"] == "FAILED"
    assert "cannot start by itself (held by admin)" in run["failure"]["Cause"]


def test_a_head_node_that_cannot_reach_s3_fails_the_job_before_submission(world, monkeypatch):
    """StagingPath head-node with no route to S3 (this machine reaches no AWS endpoint): the
    download fails, the job fails before anything is submitted, saying why."""
    import boto3
    from moto import mock_aws

    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="artifacts")
        svc, scheduler, run = world()
        svc.settings = dataclasses.replace(svc.settings, staging="head-node", artifacts_bucket="artifacts")
        monkeypatch.setattr("stepcluster.staging.URL_SECONDS", 60)
        run = svc.submit_jobs(run)
    assert run["phase"] == "FAILED"
    assert "could not download" in run["failure"]["Cause"]
    assert not list(Path(run["cluster"]["run_dir"], "jobs").glob("*/submit.rc"))


def test_polling_slows_down_before_the_history_limit_instead_of_failing(world):
    """25,000 history events end an execution: after POLLS_AT_WAIT_TIME rounds the interval
    doubles every POLLS_PER_DOUBLING rounds, up to an hour; the rounds stay affordable."""
    svc, scheduler, run = world()
    run = svc.submit_jobs(run)              # job a, wait_time 5
    scheduler.status_file.write_text("id-a R\n")
    assert svc.poll_jobs(run)["wait_seconds"] == 5
    waits = {n: svc.poll_jobs({**run, "polls": n - 1})["wait_seconds"]
             for n in (1499, 1500, 1549, 1550, 1600, 2100)}
    assert waits == {1499: 5, 1500: 10, 1549: 10, 1550: 20, 1600: 40, 2100: 3600}
    # Even from wait_time 1, the interval reaches an hour while the history has room left:
    events, wait, n = 0, 1, 0
    while wait < 3600:
        n += 1
        events += 9
        wait = decisions.wait_seconds(Run.from_dict({**run, "polls": n}), svc.plan.wait_times) if n >= 1500 else 1
    assert events < 25_000 * 0.8


def test_a_package_uploaded_by_preprocess_is_staged_from_s3(tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    from stepcluster.preprocess import PackageUploader

    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "run.sh").write_text("echo from s3\n")
    text = "[order]\nsequential = a\n\n[job a]\nhandler = run.sh\nlocal_path = job\n"
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="pkgs")
        plan = build_plan(parse_jobs_config(text, str(tmp_path / "jobs.ini"), tmp_path), tmp_path / "plan",
                          upload=PackageUploader("pkgs"))
        assert not list((tmp_path / "plan" / "payloads").glob("*.tar.gz"))
        scheduler = FakeScheduler(tmp_path)
        svc = local_service(tmp_path, plan, scheduler)
        run = svc.prepare_head_node(svc.create_cluster(
            {"input": {"cluster_name": "c1"}, "execution": "e", "plan_digest": plan.digest}))
        run = svc.submit_jobs(run)
    assert run["phase"] == "RUNNING"
    assert Path(run["cluster"]["run_dir"], "jobs", "a", "src", "run.sh").read_text() == "echo from s3\n"


def test_a_job_whose_wrapper_ran_is_never_submitted_again_even_if_the_scheduler_lists_it_nowhere(
        world, monkeypatch):
    """Grid Engine drops an ended job from qstat about a second before qacct has it: a job
    whose wrapper started was submitted, whatever one look at the scheduler says."""
    svc, scheduler, run = world()
    monkeypatch.setattr(adoption, "RECOVER_WAIT_SECONDS", 0)
    job_dir = Path(run["cluster"]["run_dir"], "jobs", "a")
    job_dir.mkdir(parents=True)
    (job_dir / "submit.intent").write_text("")
    (job_dir / "started").write_text("1700000000\n")
    with pytest.raises(SchedulerError, match="wrappers started"):
        svc.submit_jobs(run)
    assert scheduler.submissions() == []


def test_a_scheduler_outage_is_waited_out_and_never_fails_a_healthy_job(world, monkeypatch):
    """slurmctld down, sge_qmaster restarting: the status command fails. The round leaves the
    jobs as they were (not missing, not lost), says so in the record, and the run goes on."""
    svc, scheduler, run = world("parallel")
    run = svc.submit_jobs(run)
    clock = [1_000_000]
    monkeypatch.setattr(headnode, "_now", lambda: clock[0])
    scheduler.status_file.write_text("id-a R\nid-b R\nid-c R\n")
    run = svc.poll_jobs(run)
    scheduler.status_file.unlink()                    # the controller stops answering
    for _ in range(5):
        clock[0] += 170
        run = svc.poll_jobs(run)
        assert run["phase"] == "RUNNING" and run["scheduler_silent_since"] == 1_000_170
        assert {j["state"] for j in run["jobs"].values()} == {"RUNNING"}
        assert not any("missing_polls" in j for j in run["jobs"].values())
    assert "No such file" in run["scheduler_said"]
    finish(run, "a", 0)                               # a job that ends meanwhile is seen
    run = svc.poll_jobs(run)
    assert run["jobs"]["a"]["state"] == "SUCCEEDED" and run["jobs"]["b"]["state"] == "RUNNING"
    scheduler.status_file.write_text("id-b R\nid-c R\n")   # back
    run = svc.poll_jobs(run)
    assert "scheduler_silent_since" not in run and "scheduler_said" not in run
    assert not Path(scheduler.cancelled).exists()     # nothing was cancelled


def test_a_scheduler_silent_past_its_limit_fails_the_run_saying_so(world, monkeypatch):
    svc, scheduler, run = world()
    run = svc.submit_jobs(run)
    clock = [1_000_000]
    monkeypatch.setattr(headnode, "_now", lambda: clock[0])
    scheduler.status_file.unlink()
    run = svc.poll_jobs(run)
    clock[0] += decisions.SCHEDULER_OUTAGE_SECONDS - 1
    assert svc.poll_jobs(run)["phase"] == "RUNNING"
    clock[0] += 1
    run = svc.poll_jobs(run)
    assert run["phase"] == "FAILED" and run["failure"]["Error"] == "SchedulerUnavailable"
    assert run["failure"]["Cause"].startswith("fake has not answered for 900 s (the limit is 900 s): ")
    assert "No such file" in run["failure"]["Cause"]


def test_a_submit_while_the_controller_is_down_is_an_outage_to_retry_not_a_failed_job(world):
    """sbatch "Unable to contact slurm controller": SchedulerUnavailable, which the definition
    retries for about 13 minutes; the retry submits once the controller is back, once."""
    svc, scheduler, run = world()
    scheduler.down.write_text("")
    with pytest.raises(SchedulerError) as err:
        svc.submit_jobs(run)
    assert type(err.value).__name__ == "SchedulerUnavailable"
    assert "fake did not answer when job 'a' was submitted: fake: controller down" in str(err.value)
    assert err.value.output.exit_code == 1
    scheduler.down.unlink()
    retried = svc.submit_jobs(run)                     # the Retry: the same input
    assert retried["phase"] == "RUNNING" and retried["jobs"]["a"]["job_id"] == "id-a"
    assert len(scheduler.submissions()) == 1              # the refused attempt submitted nothing


# -- results kept as jobs end; cancels confirmed; a head node gone (issue 9) ------------------

@pytest.fixture
def artifacts(monkeypatch):
    """moto's S3 with the artifacts bucket; {key: bytes} of what is in it, when called."""
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="artifacts")

        def objects():
            listed = s3.list_objects_v2(Bucket="artifacts").get("Contents", [])
            return {o["Key"]: s3.get_object(Bucket="artifacts", Key=o["Key"])["Body"].read() for o in listed}
        yield objects


def submitted_keeping_results(world, statuses):
    """A parallel run submitted to a service that keeps results in the artifacts bucket, the
    scheduler showing `statuses`."""
    svc, scheduler, run = world("parallel")
    svc.settings = dataclasses.replace(svc.settings, artifacts_bucket="artifacts")
    run = svc.submit_jobs(run)
    scheduler.status_file.write_text(statuses)
    return svc, scheduler, run


def manifest_of(objects):
    import json
    return json.loads(objects()["exec-1/manifest.json"])


def test_the_round_that_sees_a_job_end_keeps_its_results_then_and_only_then(world, artifacts):
    svc, scheduler, run = submitted_keeping_results(world, "id-a R\nid-b R\nid-c R\n")
    Path(run["cluster"]["run_dir"], "jobs", "a", "stdout").write_text("a's answer\n")
    finish(run, "a", 0)
    run = svc.poll_jobs(run)
    assert artifacts()["exec-1/a/stdout"] == b"a's answer\n"          # kept by the round
    assert run["jobs"]["a"]["kept"] is True and "kept" not in run["jobs"]["b"]
    assert manifest_of(artifacts)["jobs"]["a"]["state"] == "SUCCEEDED"
    assert run["results"]["jobs_collected"] == 1
    Path(run["cluster"]["run_dir"], "jobs", "a", "stdout").write_text("changed after it was kept\n")
    finish(run, "b", 0)
    finish(run, "c", 0)
    run = svc.poll_jobs(run)
    released = svc.release_head_node(run)
    assert artifacts()["exec-1/a/stdout"] == b"a's answer\n"          # not copied a second time
    assert released["results"]["jobs_collected"] == 3 and "release_note" not in released
    assert {j["state"] for j in manifest_of(artifacts)["jobs"].values()} == {"SUCCEEDED"}


def test_an_unreachable_head_node_at_release_says_what_was_kept_and_what_may_still_run(
        world, artifacts, monkeypatch):
    """sshd gone for good: the release does not fail (the cluster must still be deleted); its
    note, which the definition adds to the cause, says what was not kept and what may run."""
    monkeypatch.setattr(headnode, "RELEASE_CONNECT_PAUSES", (0, 0))
    svc, scheduler, run = submitted_keeping_results(world, "id-a R\nid-b R\nid-c Q\n")
    Path(run["cluster"]["run_dir"], "jobs", "b", "started").write_text("1700000000\n")
    finish(run, "a", 0)
    run = svc.poll_jobs(run)
    run = svc.poll_jobs(run)
    attempts = []

    def unreachable(_):
        attempts.append(1)
        return LocalBash(unreachable=True)
    svc.connect = unreachable
    released = svc.release_head_node(run)
    assert len(attempts) == 1                       # one connection object, tried three times
    note = released["release_note"]
    assert "The head node could not be reached to keep the last results and clean up: cannot reach " \
           "head node hpc@10.0.0.9:22: [Errno 111] Connection refused." in note
    assert "Not kept: the results of jobs 'b', 'c'; kept: those of job 'a' (kept under s3://artifacts/exec-1/)" in note
    assert "Jobs 'b' (fake job id-b), 'c' (fake job id-c) may still be running on the head node: " \
           "they were not cancelled; the run's folder" in note and "stepcluster cleanup exec-1" in note
    assert "run_dir_removed" not in released["cluster"]
    manifest = manifest_of(artifacts)
    assert manifest["jobs"]["a"]["results"] == "s3://artifacts/exec-1/a/" and manifest["jobs"]["b"]["results"] is None


def test_a_cancel_the_scheduler_does_not_confirm_is_tried_again_and_reported(world, monkeypatch):
    monkeypatch.setattr(headnode, "CANCEL_CHECK_PAUSES", (0, 0, 0))
    svc, scheduler, run = world("parallel")
    run = svc.submit_jobs(run)
    scheduler.status_file.write_text("id-a R\nid-b R\nid-c Q\n")
    run = svc.poll_jobs(run)
    scheduler.status_file.write_text("id-a R\nid-b GONE\n")       # a does not go away
    cancelled = svc.cancel_jobs(run)
    assert scheduler.cancelled.read_text().splitlines() == ["id-a id-b id-c", "id-a", "id-a"]
    assert cancelled["jobs"]["b"]["state"] == cancelled["jobs"]["c"]["state"] == "CANCELLED"
    assert cancelled["jobs"]["a"]["state"] == "RUNNING"
    assert cancelled["jobs"]["a"]["reason"] == "its cancel was not confirmed (job id-a is R)"
    released = svc.release_head_node(cancelled)
    assert Path(run["cluster"]["run_dir"]).is_dir() and "run_dir_removed" not in released["cluster"]
    assert "Jobs 'a' (fake job id-a) may still be running on the head node: fake did not confirm their " \
           "cancel (job id-a is R); the run's folder" in released["release_note"]
    scheduler.status_file.write_text("id-a GONE\n")                # gone at last: cleaned up
    again = svc.release_head_node(cancelled)
    assert not Path(run["cluster"]["run_dir"]).exists() and "release_note" not in again


def test_a_cancel_while_the_controller_is_down_is_an_outage_to_retry(world, monkeypatch):
    monkeypatch.setattr(headnode, "CANCEL_CHECK_PAUSES", (0,))
    svc, scheduler, run = world("parallel")
    run = svc.submit_jobs(run)
    scheduler.status_file.write_text("id-a R\nid-b R\nid-c R\n")
    run = svc.poll_jobs(run)
    scheduler.down.write_text("")
    scheduler.status_file.unlink()
    with pytest.raises(SchedulerError) as err:
        svc.cancel_jobs(run)
    assert type(err.value).__name__ == "SchedulerUnavailable"
    assert str(err.value).startswith("fake did not answer when jobs a, b, c were cancelled: ")
    scheduler.down.unlink()
    scheduler.status_file.write_text("")                              # back; the jobs are gone
    assert {j["state"] for j in svc.cancel_jobs(run)["jobs"].values()} == {"CANCELLED"}


@pytest.mark.parametrize("name", ["..", ".", "", "a/../../etc"])
def test_the_cleanup_refuses_a_name_that_would_leave_the_runs_folder(world, name):
    svc, _, _ = world()
    with pytest.raises(InputError, match="is not an execution name"):
        svc.service.head_node.release_found(name)


def test_a_run_past_max_run_minutes_cancels_what_is_left_keeps_its_results_and_fails(world, artifacts, monkeypatch):
    """The round that finds MaxRunMinutes passed fails the run; the definition then takes the
    failed-job path: Cancel Jobs, Release Head Node (results kept, folder removed)."""
    svc, scheduler, run = submitted_keeping_results(world, "id-a R\nid-b R\nid-c Q\n")
    svc.settings = dataclasses.replace(svc.settings, max_run_minutes=60)
    started = run["started_at"]
    Path(run["cluster"]["run_dir"], "jobs", "b", "output").mkdir(parents=True, exist_ok=True)
    Path(run["cluster"]["run_dir"], "jobs", "b", "output", "partial.txt").write_text("so far\n")
    finish(run, "a", 0)
    monkeypatch.setattr(headnode, "_now", lambda: started + 3599)
    run = svc.poll_jobs(run)
    assert run["phase"] == "RUNNING" and run["wait_seconds"] == 1     # never waits past the limit
    monkeypatch.setattr(headnode, "_now", lambda: started + 3600)
    run = svc.poll_jobs(run)
    assert run["phase"] == "FAILED" and run["failure"]["Error"] == "RunTimeLimitReached"
    assert "jobs 'b' (fake job id-b, RUNNING), 'c' (fake job id-c, PENDING) were still queued" in run["failure"]["Cause"]
    scheduler.status_file.write_text("")                            # cancelled: gone
    released = svc.release_head_node(svc.cancel_jobs(run))
    assert {n: j["state"] for n, j in released["jobs"].items()} == {"a": "SUCCEEDED", "b": "CANCELLED", "c": "CANCELLED"}
    assert artifacts()["exec-1/b/output/partial.txt"] == b"so far\n"
    assert not Path(run["cluster"]["run_dir"]).exists()


# -- a wide run: its jobs in the artifacts bucket, not in its record (issue 11) ----------------

def jobs_of(svc, run):
    """A record's jobs: its own, or those its table names in the bucket."""
    from stepcluster.jobtable import JobTable

    if "jobs_table" not in run:
        return run["jobs"]
    loaded = JobTable(svc.wiring.s3, "artifacts", svc.plan.names).load(Run.from_dict(run))
    return {name: job.to_dict() for name, job in loaded.jobs.items()}


def test_a_wide_run_is_the_same_run_with_its_jobs_in_the_bucket(tmp_path, world, artifacts, monkeypatch):
    """The same parallel run (a succeeds, b fails, c is cancelled) with its jobs in its record
    and, as a run with more jobs than a record carries, in the artifacts bucket: every state
    the same, every job the same, the same changes reported; the wide record holds no job."""
    monkeypatch.setattr(headnode, "_now", lambda: 1_700_000_100)      # both runs at one time
    steps = []
    for jobs_in_record in (200, 1):
        svc, scheduler, run = world("parallel", jobs_in_record=jobs_in_record, artifacts_bucket="artifacts")
        records, seen = [], []

        def step(record):
            # read now: each store deletes the shards the one before it replaced
            records.append(record)
            # (less the results' location an inline record carries while it can: the manifest has it)
            jobs = {n: {k: v for k, v in j.items() if k != "results"} for n, j in jobs_of(svc, record).items()}
            seen.append((record.get("phase"), jobs, record.get("changes"), record.get("failure")))
            return record
        run = step(svc.submit_jobs(step(run)))
        scheduler.status_file.write_text("id-a R\nid-b R\nid-c Q\n")
        finish(run, "a", 0)
        run = step(svc.poll_jobs(run))
        finish(run, "b", 3)
        run = step(svc.poll_jobs(run))
        scheduler.status_file.write_text("id-c GONE\n")            # the cancel is confirmed
        run = step(svc.release_head_node(step(svc.cancel_jobs(run))))
        steps.append(seen)
        manifest = manifest_of(artifacts)["jobs"]
        if jobs_in_record == 1:
            assert all("jobs" not in r and "jobs_table" in r for r in records)
            assert records[-1]["jobs_table"]["counts"] == {"SUCCEEDED": 1, "FAILED": 1, "CANCELLED": 1}
        shutil.rmtree(tmp_path / "remote")
        for path in (tmp_path / "submitted.txt", tmp_path / "known.txt"):
            path.unlink(missing_ok=True)
    inline, wide = steps
    assert wide == inline
    assert [c["job"] for c in inline[1][2]] == ["a", "b", "c"]       # submitted: each one PENDING
    assert inline[-2][1]["c"]["state"] == "CANCELLED" and manifest["c"]["state"] == "CANCELLED"
    assert inline[3][3]["Error"] == "JobFailed"
