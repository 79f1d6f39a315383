"""The head node's work over SSH: prepare, submit, poll, cancel, release.

The states "Prepare Head Node", "Submit Jobs", "Poll Jobs", "Cancel Jobs" and "Release Head
Node". Each call opens one SSH connection and runs a few generated scripts on it (`jobscripts`);
what their output means for the run is decided by the pure `decisions` module. paramiko is
imported only here (and only when connecting).
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
import time

from stepcluster import (adoption, decisions, directives, jobrequests, jobscripts, logs, results, resume, staging,
                         usage)
from stepcluster.decisions import JobObservation, Limits
from stepcluster.errors import (HeadNodeError, InputError, RequestRefused, SchedulerError, SchedulerUnavailable,
                               StagingError, TransientSSHError)
from stepcluster.record import ClusterRecord, JobState, Run
from stepcluster.schedulers import Category, CommandOutput, JobStatus, Scheduler, get_scheduler
from stepcluster.wiring import Wiring

log = logs.logger(__name__)

STDERR_TAIL_BYTES = 2000
#: Seconds before each look at whether the cancelled jobs have ended (Slurm shows a running job
#: COMPLETING for a moment after scancel; Grid Engine shows `dr` at once); the jobs still shown
#: queued or running are cancelled again before the next look.
CANCEL_CHECK_PAUSES = (0, 1, 3)
#: Release Head Node tries to connect again after these pauses before it reports the head node
#: unreachable (and returns, so that the cluster is still deleted and the cause says what is left).
RELEASE_CONNECT_PAUSES = (5, 15)
#: A watching round submits the next sequential job and keeps the ended jobs' results itself
#: only if it reported within this many seconds: the rest of the function's 900 s is theirs
#: (a window is at most 780 s). Later, Submit Jobs and the next round do them.
ROUND_WORK_SECONDS = 120
#: How often a watching round looks for a result file on the head node (a file test).
WATCH_TICK_SECONDS = 0.2


def _now() -> int:
    return int(time.time())


class HeadNodeWork:
    def __init__(self, wiring: Wiring):
        self.wiring = wiring

    # -- connections -----------------------------------------------------------------------
    def connect(self, run: Run):
        from stepcluster.remote.ssh import HeadNodeConnection  # paramiko: head-node tasks only

        w = self.wiring
        node = w.backend.head_node(run.cluster.to_dict())
        secret = run.cluster.secret_arn or w.settings.ssh_key_secret_id
        return HeadNodeConnection(node.host, node.port, node.user, w.private_key(secret), node.host_key)

    def scheduler(self, run: Run) -> Scheduler:
        return get_scheduler(run.cluster.scheduler)

    # -- Prepare Head Node -----------------------------------------------------------------
    def prepare_head_node(self, run: Run) -> Run:
        """Check the scheduler answers; make the run's folder."""
        if run.run_dir:
            return run
        scheduler = self.scheduler(run)
        script = jobscripts.prepare_run_script(scheduler.name, scheduler.probe_argv(),
                                               self.wiring.settings.remote_root, run.execution)
        with self.connect(run) as ssh:
            result = ssh.run_script(script)
        run_dir = next((" ".join(r.fields) for r in jobscripts.parse_records(result.stdout)
                        if r.tag == "run_dir"), None)
        if not run_dir:
            raise HeadNodeError(f"preparing the run's folder under {self.wiring.settings.remote_root!r} "
                                "printed no folder", result=result)
        run = run.copy()
        run.cluster.run_dir = run_dir
        return run

    # -- Submit Jobs -----------------------------------------------------------------------
    def submit_jobs(self, run: Run) -> Run:
        """Stage and submit the next job (sequential) or all jobs (parallel)."""
        run = self._resumed(run)
        with self.connect(run) as ssh:
            return self._submit(run, ssh)

    def _resumed(self, run: Run) -> Run:
        """A resumed run's first Submit Jobs: the jobs the earlier run finished are SUCCEEDED
        here, not run again (resume.py; Create Cluster checked the reference)."""
        if not run.resume or "skipped" in run.resume:
            return run
        w = self.wiring
        manifest = resume.earlier_manifest(w.s3, w.settings.artifacts_bucket, run.resume["from"], None)
        digests = {job.name: job.work_digest for job in w.plan.jobs}
        # an s3_uri job is spared only while its objects are those the earlier run staged: one
        # listing per address, of the jobs that could be spared
        uris = {name: w.plan.job(name).s3_uri for name in resume.finished_unchanged(manifest, digests)
                if w.plan.job(name).s3_uri}
        now = {uri: staging.current_source_version(uri, w.s3) for uri in set(uris.values())}
        versions = {name: now[uri] for name, uri in uris.items()}
        for name in resume.objects_changed(manifest, versions):
            log.info("resuming %s: job %s runs again: the objects at %s are not those it ran with",
                     run.resume["from"], name, uris[name])
        skipped = resume.skipped_jobs(manifest, digests, w.plan.prerequisites, versions)
        run = run.copy()
        run.jobs.update(skipped)
        run.resume = {**run.resume, "skipped": len(skipped)}
        log.info("resuming %s: %d of %d jobs finished there are not run again", run.resume["from"],
                 len(skipped), len(run.jobs))
        return run

    def _facts(self) -> dict:
        """What the manifest says beyond the record (results.plan_facts)."""
        return results.plan_facts(self.wiring.plan, usage.parse_prices(self.wiring.settings.price_table))

    def _submit(self, run: Run, ssh) -> Run:
        plan = self.wiring.plan
        run, names = decisions.next_batch(run, plan.names, plan.prerequisites)
        batch = [plan.job(name) for name in names]
        scheduler = self.scheduler(run)
        again = {name: run.jobs[name].attempt for name in names if run.jobs[name].attempt}
        if again:
            # a job's next attempt: the last one's files go to JOB/attempt-K/ first (kept with
            # the job's results), so that this one starts with none of them
            ssh.run_script(jobscripts.next_attempt_script(run.run_dir, again))
        # A job that cannot be staged or that the scheduler refuses fails the run, before
        # anything more is submitted; with on_failure "finish" it fails alone and the rest go on.
        refused = _Refusals(alone=plan.on_failure == "finish")
        try:
            batch, requests, versions = self._stage_batch(ssh, scheduler, run, batch, refused)
            accepted = self._submit_batch(ssh, scheduler, run, batch, requests, refused)
        except _NotSubmittable as exc:
            return decisions.failed_before_submit(run, exc.name, exc.why, now=_now())
        limits = self.limits()
        run = decisions.submitted(run, accepted, wait_times=plan.wait_times, watching=limits.watching,
                                  source_versions=versions)
        if not refused:
            return run
        run = decisions.failed_alone(run, refused, now=_now())
        if run.active_jobs() or decisions.ready_jobs(run, plan.prerequisites):
            return run       # a later round, once nothing else can run, says what failed
        # nothing left to wait for: the run ends now, its cause naming every failed job
        earlier = [n for n in decisions.failed_jobs(run, list(run.jobs)) if run.jobs[n].job_id]
        tails = self._stderr_tails(ssh, run, earlier) if earlier else {}
        return decisions.decide(run, list(refused), wait_times=plan.wait_times, scheduler=scheduler.name,
                                stderr_tails=tails, now=_now(), limits=limits,
                                prerequisites=plan.prerequisites, on_failure=plan.on_failure).run

    def _stage_batch(self, ssh, scheduler: Scheduler, run: Run, batch, refused: _Refusals):
        """The batch's files and wrappers onto the head node: (the jobs that can go, {job: its
        JobRequest}, the s3_uri jobs' source versions); each job that cannot goes to `refused`.

        One upload when the function holds every handler (ssh staging): the files and the
        wrappers, whose headers carry the handlers' directives, in one tar. A head node that
        fetches the files itself shows the handlers first, so the wrappers follow them."""
        def going(jobs):
            return [job for job in jobs if job.name not in refused]
        bundle = io.BytesIO()
        with tarfile.open(fileobj=bundle, mode="w:gz") as tar:
            fetches, handlers, versions = self._stage(run, batch, tar, refused)
            batch = going(batch)
            if not fetches:
                requests = self._requests(ssh, scheduler, run, batch, handlers, refused)
                batch = going(batch)
                self._add_wrappers(tar, run, batch, requests)
        if not batch:
            return [], {}, {}
        ssh.run(["tar", "-xzf", "-", "-C", run.run_dir], stdin=bundle.getvalue())
        if fetches:
            self._fetch_on_head_node(ssh, batch, fetches, refused)
            requests = self._requests(ssh, scheduler, run, going(batch), handlers, refused)
            batch = going(batch)
            wrappers = io.BytesIO()
            with tarfile.open(fileobj=wrappers, mode="w:gz") as tar:
                self._add_wrappers(tar, run, batch, requests)
            ssh.run(["tar", "-xzf", "-", "-C", run.run_dir], stdin=wrappers.getvalue())
        return batch, requests, versions

    def _submit_batch(self, ssh, scheduler: Scheduler, run: Run, batch, requests, refused: _Refusals):
        """Give the staged batch to the scheduler: {job: its id}; each refusal goes to `refused`."""
        if not batch:
            return {}
        submissions = []
        for job in batch:
            d = jobscripts.job_dir(run.run_dir, job.name)
            submissions.append((job.name, scheduler.submit_argv(
                f"{d}/run.sh", job_name=jobscripts.submission_name(run.execution, job.name,
                                                                   run.jobs[job.name].attempt or 1),
                workdir=f"{d}/src", stdout=f"{d}/stdout", stderr=f"{d}/stderr",
                request=requests[job.name].argv)))
        result = self._run_submit_script(ssh, scheduler, run, submissions, stop_at_refusal=not refused.alone)
        accepted = {}
        for record in jobscripts.parse_records(result.stdout):
            if record.tag != "submit":
                continue
            name, out = record.fields[0], jobscripts.command_output(record, 1)
            if scheduler.unavailable(out):
                # an outage, not a refusal: the definition retries Submit Jobs (and Poll Jobs,
                # which submits the next sequential job) with back-off for several minutes
                raise SchedulerUnavailable(
                    f"{scheduler.name} did not answer when job {name!r} was submitted: "
                    f"{(out.stderr.strip() or out.stdout.strip())[:500]}",
                    scheduler=scheduler.name, output=out)
            if out.exit_code != 0:
                refused.add(name, f"{scheduler.name} refused the job (exit {out.exit_code}): "
                                  f"{out.stderr.strip() or out.stdout.strip()}")
                continue
            accepted[name] = scheduler.parse_submit(out)
            log.info("job %s submitted as %s", name, accepted[name])
        missing = [job.name for job in batch if job.name not in accepted and job.name not in refused]
        if missing:
            raise SchedulerError(f"the submit script reported nothing for jobs {missing}: {result.tail()}",
                                 scheduler=scheduler.name)
        return accepted

    def _stage(self, run: Run, batch, tar: tarfile.TarFile, refused: _Refusals):
        """The batch's files into `tar` (or, in head-node staging, the scripts that make the
        head node download them itself), each handler's bytes where they passed through here,
        and the s3_uri jobs' `source_version`s. Everything is staged before anything of the
        batch reaches the scheduler: a job whose files cannot be staged goes to `refused`."""
        w = self.wiring
        by_head_node = w.settings.staging == "head-node"
        fetches, handlers, versions = [], {}, {}
        for job in batch:
            try:
                if by_head_node:
                    script, version = staging.fetch_script(
                        w.plan, job, job_dir=jobscripts.job_dir(run.run_dir, job.name),
                        s3_client=w.s3, artifacts_bucket=w.settings.artifacts_bucket)
                    fetches.append(script)
                else:
                    handlers[job.name], version = staging.add_job_files(tar, w.plan, job, s3_client=w.s3)
            except StagingError as exc:
                refused.add(job.name, str(exc))
                continue
            if version:
                versions[job.name] = version
        return fetches, handlers, versions

    def _requests(self, ssh, scheduler: Scheduler, run: Run, batch, handlers: dict[str, bytes],
                  refused: _Refusals) -> dict:
        """{job name: its JobRequest}: the options in each staged handler and the config's
        resource keys, checked against the scheduler's rules (a job the scheduler must not be
        given goes to `refused`). A handler whose bytes passed through here (ssh staging) is read
        here; one the head node fetched itself is read there (AWK_CANDIDATES: the same rule),
        in one script for the batch."""
        syntax = scheduler.DIRECTIVES
        remote = [(job.name, job.handler) for job in batch if job.name not in handlers]
        heads = {}
        if remote:
            script = jobscripts.directive_lines_script(run.run_dir, remote, prefix=syntax.prefix,
                                                       whole_file=syntax.whole_file,
                                                       max_bytes=directives.MAX_SCRIPT_BYTES)
            heads = {r.fields[0]: jobscripts.unb64(r.fields[1])
                     for r in jobscripts.parse_records(ssh.run_script(script).stdout) if r.tag == "head"}
        requests: dict = {}
        for job in batch:
            if job.name in handlers:
                found = directives.staged_directives(handlers[job.name], syntax)
            else:
                found = directives.directives_of(directives.parse_candidates(heads.get(job.name, "")), syntax)
            try:
                requests[job.name] = jobrequests.request_for(scheduler, job.resources, found, job.handler)
            except RequestRefused as exc:
                refused.add(job.name, f"{scheduler.name} cannot be given this job: " + "; ".join(exc.problems))
                continue
            for note in requests[job.name].overridden:
                log.info("job %s: %s", job.name, note)
        return requests

    def _add_wrappers(self, tar: tarfile.TarFile, run: Run, batch, requests) -> None:
        for job in batch:
            wrapper = jobscripts.wrapper_script(
                run_dir=run.run_dir, name=job.name, handler=job.handler,
                env={"STEPCLUSTER_JOB_NAME": job.name, "STEPCLUSTER_EXECUTION": run.execution,
                     "STEPCLUSTER_CLUSTER_NAME": run.cluster_name},
                directives=requests[job.name].directives, array=bool(job.resources.array),
                attempt=run.jobs[job.name].attempt or 1)
            _add_bytes(tar, f"jobs/{job.name}/run.sh", wrapper.encode(), 0o755)

    def _run_submit_script(self, ssh, scheduler: Scheduler, run: Run, submissions, *, stop_at_refusal: bool = True):
        """Submit; where an earlier attempt died while submitting some of these, adopt what the
        scheduler has by their names, then submit (again) only those it verifiably does not know."""
        script = jobscripts.submit_script(run.run_dir, submissions, stop_at_refusal=stop_at_refusal)
        result = ssh.run_script(script)
        unsure = {r.fields[0]: r.fields[1:] == ("ran",)
                  for r in jobscripts.parse_records(result.stdout) if r.tag == "unsure"}
        if not unsure:
            return result
        adopted, not_known = adoption.recover_submissions(
            ssh, scheduler, run.execution, list(unsure), ran={n for n, ran in unsure.items() if ran},
            attempts={n: run.jobs[n].attempt or 1 for n in unsure if n in run.jobs})
        ssh.run_script(jobscripts.recovery_script(run.run_dir, adopted, not_known))
        result = ssh.run_script(script)
        still = [r.fields[0] for r in jobscripts.parse_records(result.stdout) if r.tag == "unsure"]
        if still:
            raise SchedulerError(f"cannot tell whether jobs {still} were submitted: {result.tail()}",
                                 scheduler=scheduler.name)
        return result

    def _fetch_on_head_node(self, ssh, batch, fetches, refused: _Refusals) -> None:
        """Run the download scripts; each job whose files did not come goes to `refused`."""
        result = ssh.run_script("".join(f"(\n{f})\n" for f in fetches), check=False)
        fetched = {r.fields[0]: r.fields[1] for r in jobscripts.parse_records(result.stdout)
                   if r.tag == "fetched"}
        for job in batch:
            if fetched.get(job.name) != "0":
                refused.add(job.name, "the head node could not download its files (does it reach S3?): "
                            + (result.tail(5) or "no output"))

    # -- Poll Jobs -------------------------------------------------------------------------
    def poll_jobs(self, run: Run) -> Run:
        """One round: one SSH connection, every job in flight.

        With a poll window (PollWindowSeconds) the round stays on the head node until a job
        ends (or has run its wait_time since it started: `decisions.next_look`), the run has
        something else to act on, or the window is spent: it looks
        (files and one scheduler query) every `wait_time`, and in between waits for a start or
        result file (`jobscripts.watch_script`), so the state machine sees a round per event,
        not per `wait_time`. The next sequential job is submitted, and the ended jobs' results kept,
        in the round only while it has time for them under the function's timeout; otherwise
        Submit Jobs and the next round do it."""
        scheduler = self.scheduler(run)
        limits = self.limits()
        began = time.monotonic()
        with self.connect(run) as ssh:
            left = decisions.unkept_jobs(run) if limits.watching else []
            if left:
                run = self._keep(ssh, run, left)    # left by the last round, out of time for them
            run, changed = self._watch(ssh, scheduler, run, limits, began)
            now = _now()
            plan = self.wiring.plan
            failed = decisions.blamed_jobs(run, changed, on_failure=plan.on_failure,
                                           prerequisites=plan.prerequisites)
            tails = self._stderr_tails(ssh, run, failed) if failed else {}
            passed = {name: scheduler.limit_in_stderr(tail, plan.job(name).resources)
                      for name, tail in tails.items()}
            decision = decisions.decide(run, changed, wait_times=plan.wait_times,
                                        scheduler=scheduler.name, stderr_tails=tails, now=now, limits=limits,
                                        limits_in_stderr={n: p for n, p in passed.items() if p},
                                        prerequisites=plan.prerequisites, on_failure=plan.on_failure)
            run = decision.run
            in_time = time.monotonic() - began <= ROUND_WORK_SECONDS
            if decision.action == decisions.Action.SUBMIT and in_time:
                # The jobs that became ready (a sequential run's next one, a graph's jobs whose
                # prerequisites all succeeded, a retry) go out in this round, on this connection
                # (saves a Submit Jobs state, a Lambda call and an SSH connection each time).
                run = self._submit(run, ssh)
            ended = decisions.ended_jobs(run, changed)
            if ended and (in_time or not limits.watching):
                run = self._keep(ssh, run, ended)
        return run

    def _retry_rules(self) -> dict[str, decisions.RetryRule]:
        return {job.name: decisions.RetryRule(job.retries, job.retry_on)
                for job in self.wiring.plan.jobs if job.retries}

    def limits(self) -> Limits:
        settings = self.wiring.settings
        return Limits(settings.blocked_job_timeout_seconds, max_run_seconds=settings.max_run_minutes * 60,
                      poll_window_seconds=settings.poll_window_seconds)

    def _watch(self, ssh, scheduler: Scheduler, run: Run, limits: Limits, began: float) -> tuple[Run, list[str]]:
        """Look at the jobs until `decisions.next_look` says the round reports (at once,
        without a window): the record after the last look, and every job that changed."""
        changed: list[str] = []
        seen: set[str] = set()
        silent_at_start = run.scheduler_silent_since is not None
        while True:
            observations, scheduler_failure = self._observe(ssh, scheduler, run)
            now = _now()
            run, new = decisions.apply_round(run, observations, scheduler=scheduler.name, now=now,
                                             limits=limits, scheduler_failure=scheduler_failure,
                                             retries=self._retry_rules())
            changed += [name for name in new if name not in seen]
            seen.update(new)
            plan = self.wiring.plan
            look = decisions.next_look(run, changed, now=now, wait_times=plan.wait_times,
                                       window_left=limits.poll_window_seconds - (time.monotonic() - began),
                                       limits=limits, scheduler=scheduler.name,
                                       silent_at_start=silent_at_start, prerequisites=plan.prerequisites,
                                       on_failure=plan.on_failure)
            if look <= 0:
                return run, changed
            self._wait_for_an_end(ssh, run, max(1, round(look)))

    def _wait_for_an_end(self, ssh, run: Run, seconds: int) -> None:
        plan = self.wiring.plan
        active = run.active_jobs()
        arrays = {n: (run.jobs[n].tasks or {}).get("ended", 0) for n in active if plan.job(n).resources.array}
        pending = [n for n in active if n not in arrays and run.jobs[n].state == JobState.PENDING]
        script = jobscripts.watch_script(run.run_dir, [n for n in active if n not in arrays], arrays,
                                         seconds, WATCH_TICK_SECONDS, pending=pending)
        seen = jobscripts.parse_records(ssh.run_script(script, timeout=seconds + 60).stdout)
        if jobscripts.Record("watch", ("gone",)) in seen:
            # Removed under a round that was waiting: the run's cleanup (an abort) went first.
            # Nothing may be submitted or kept into a folder that is gone.
            raise HeadNodeError(f"the run's folder {run.run_dir} is gone from the head node "
                                "(the run was cleaned up while this round waited)")

    def _keep(self, ssh, run: Run, names: list[str]) -> Run:
        """Keep the results of the jobs that ended in this round, now: whatever happens to the
        run, the head node or the execution later, they are in the bucket. (After the next
        submission: the next job runs meanwhile.)"""
        bucket = self.wiring.settings.artifacts_bucket
        if not bucket:
            return run
        kept = run.copy()
        try:
            results.collect(ssh, kept, bucket, names=names, s3_client=self.wiring.s3, facts=self._facts())
        except Exception as exc:  # noqa: BLE001 - a head start: Release Head Node keeps what this missed
            log.warning("could not keep the results of jobs %s yet (Release Head Node will try): %s: %s",
                        names, type(exc).__name__, exc)
            return run
        return kept

    def _observe(self, ssh, scheduler: Scheduler, run: Run) -> tuple[dict[str, JobObservation], str | None]:
        """What the head node shows of each active job: its wrapper's files and the scheduler's
        answer, with the scheduler's history asked about the jobs gone from its live queue.

        Also what a failing scheduler printed (None when it answered): a status command that
        exits non-zero where its adapter sees no answer it knows (slurmctld down, sge_qmaster
        restarting) makes this round one of an outage, not a verdict on the jobs."""
        active = run.active_jobs()
        ids = [run.jobs[n].job_id for n in active]
        plan = self.wiring.plan
        arrays = {n: len(plan.job(n).resources.task_ids) for n in active if plan.job(n).resources.array}
        result = ssh.run_script(jobscripts.inspect_script(
            run.run_dir, active, scheduler.status_argv(ids) if ids else None, arrays=arrays))
        files, statuses, tallies = {}, {}, {}
        for record in jobscripts.parse_records(result.stdout):
            if record.tag in ("started", "result") and record.fields:
                started, result_line = files.get(record.fields[0], ("", ""))
                value = " ".join(record.fields[1:]).strip()
                files[record.fields[0]] = (value, result_line) if record.tag == "started" else (started, value)
            elif record.tag == "tasks" and record.fields[0] in arrays:
                tallies[record.fields[0]] = _tally(arrays[record.fields[0]], record.fields[1:])
            elif record.tag == "status":
                answer = jobscripts.command_output(record, 0)
                try:
                    statuses = scheduler.parse_status(answer, ids)
                except SchedulerError:
                    # Any failing status command, not only the adapter's UNAVAILABLE words: a
                    # status query is never the job's fault, and the outage is bounded (15 min),
                    # where an outage message the table lacks would fail healthy jobs at once.
                    if answer.exit_code == 0:
                        raise                       # it answered, with something unreadable
                    log.warning("%s did not answer (exit %s): %s", scheduler.name, answer.exit_code,
                                (answer.stderr or answer.stdout).strip()[:300])
                    return self._files_only(active, files, tallies), answer.stderr or answer.stdout
        observations = {}
        for name in active:
            started, result_line = files.get(name, ("", ""))
            observations[name] = JobObservation(started, result_line,
                                                statuses.get(run.jobs[name].job_id), tallies.get(name))
        gone = [run.jobs[n].job_id for n in active if decisions.needs_history(observations[n])]
        history = self._accounting(ssh, scheduler, gone)
        for name in active:
            known = history.get(run.jobs[name].job_id)
            if known is not None:
                observations[name] = dataclasses.replace(observations[name], status=known)
        return observations, None

    @staticmethod
    def _files_only(active: list[str], files: dict, tallies: dict) -> dict[str, JobObservation]:
        return {name: JobObservation(*files.get(name, ("", "")), tasks=tallies.get(name)) for name in active}

    def _accounting(self, ssh, scheduler: Scheduler, ids: list[str]) -> dict[str, JobStatus]:
        commands = [(i, scheduler.accounting_argv(i)) for i in ids]
        commands = [(i, argv) for i, argv in commands if argv]
        if not commands:
            return {}
        out = ssh.run_script(jobscripts.commands_script(commands))
        history = {}
        for record in jobscripts.parse_records(out.stdout):
            if record.tag == "cmd":
                job_id = record.fields[0]
                status = scheduler.parse_accounting(jobscripts.command_output(record, 1), job_id)
                if status.category != Category.MISSING:
                    history[job_id] = status
        return history

    def _stderr_tails(self, ssh, run: Run, names: list[str]) -> dict[str, str]:
        tasks = {n: run.jobs[n].tasks["failed_task"] for n in names if (run.jobs[n].tasks or {}).get("failed_task")}
        out = ssh.run_script(jobscripts.tails_script(run.run_dir, names, STDERR_TAIL_BYTES, tasks), check=False)
        return {r.fields[0]: jobscripts.unb64(r.fields[1]) for r in jobscripts.parse_records(out.stdout)
                if r.tag == "tail" and len(r.fields) > 1}

    # -- Cancel Jobs / Release Head Node ---------------------------------------------------
    def cancel_jobs(self, run: Run) -> Run:
        """Cancel every job of the run still queued or running (known to the record or not)."""
        if run.cluster is None or not run.run_dir or not run.cluster.ready:
            return run
        with self.connect(run) as ssh:
            cancel = self._cancel_leftovers(ssh, run)
        if cancel.unconfirmed and cancel.silent:
            # The controller is down: the definition retries Cancel Jobs for about 13 minutes
            # (what is not cancelled by then, Release Head Node tries again and reports).
            raise SchedulerUnavailable(
                f"{self.scheduler(run).name} did not answer when jobs "
                f"{', '.join(sorted(cancel.unconfirmed))} were cancelled: {cancel.said}",
                scheduler=self.scheduler(run).name, job_ids=sorted(cancel.unconfirmed.values()))
        return decisions.cancelled(run, cancel.confirmed, cancel.unconfirmed, said=cancel.said, now=_now())

    def release_head_node(self, run: Run) -> Run:
        """Keep the results, then leave the head node as the run found it.

        Cancels leftover jobs (so nothing writes any more), copies every started job's stdout,
        stderr, exit record and output folder to the artifacts bucket, then removes the run's
        folder. On every path: the cluster, and all on it, is deleted next.
        """
        if run.cluster is None or not run.run_dir or not run.cluster.ready:
            return run
        with self.connect(run) as ssh:
            unreachable = self._connect_for_release(ssh)
            if unreachable:
                return self._unreachable(run, unreachable)
            return self._release(ssh, run)

    def _connect_for_release(self, ssh) -> str | None:
        """Connect, trying again after RELEASE_CONNECT_PAUSES; None, or why it could not."""
        for pause in (*RELEASE_CONNECT_PAUSES, None):
            try:
                ssh.connect()
                return None
            except TransientSSHError as exc:
                if pause is None:
                    return str(exc)
                log.warning("%s: trying again in %s s", exc, pause)
                time.sleep(pause)

    def _unreachable(self, run: Run, why: str) -> Run:
        """The head node is gone (sshd down, instance lost): what each round kept stays kept;
        the manifest and the cause say what was not, and what may still be running."""
        run = run.copy()
        bucket = self.wiring.settings.artifacts_bucket
        if bucket:
            results.write_summary(self.wiring.s3, bucket, run, self._facts())
        run.release_note = decisions.release_note(
            run, scheduler=self.scheduler(run).name, unreachable=why,
            cluster_deleted=self._cluster_deleted_next(run))
        return run

    def _cluster_deleted_next(self, run: Run) -> bool:
        return self.wiring.backend.creates_clusters and not run.keep_cluster

    def _release(self, ssh, run: Run) -> Run:
        run = run.copy()
        bucket = self.wiring.settings.artifacts_bucket
        cancel = self._cancel_leftovers(ssh, run)
        if bucket:
            results.collect(ssh, run, bucket, s3_client=self.wiring.s3, facts=self._facts())
        if cancel.unconfirmed:
            log.warning("keeping %s: jobs %s may still be running in it", run.run_dir, cancel.unconfirmed)
        else:
            ssh.run(["rm", "-rf", "--", run.run_dir])
            run.cluster.run_dir_removed = True
        run.release_note = decisions.release_note(
            run, scheduler=self.scheduler(run).name, unconfirmed=cancel.unconfirmed, said=cancel.said,
            cluster_deleted=self._cluster_deleted_next(run))
        return run

    def release_found(self, execution: str, cluster: dict | None = None) -> dict:
        """After an abort or a timeout (no run record): find the execution's folder on the head
        node, cancel its jobs, keep what they wrote, remove it (one connection). `cluster`: the
        record of a created cluster that is about to be deleted (its head node and run key);
        None for the existing head node. Returns {"run_dir" (None: there was none), "removed",
        and "note": what could not be done}."""
        if execution in ("", ".", "..") or "/" in execution:
            # its folder is RemoteWorkRoot/NAME: a name that leaves it is no execution's
            raise InputError(f"{execution!r} is not an execution name")
        if cluster is None:
            node = self.wiring.backend.head_node({})
            cluster = {"status": "READY", "head_node": {"scheduler": node.scheduler}}
        run = Run(execution=execution, order="parallel", cluster=ClusterRecord.from_dict(cluster))
        with self.connect(run) as ssh:
            found = ssh.run_script(jobscripts.find_run_script(self.wiring.settings.remote_root, execution))
            run.cluster.run_dir = next((" ".join(r.fields) for r in jobscripts.parse_records(found.stdout)
                                        if r.tag == "run_dir"), None)
            if run.run_dir is None:
                return {"run_dir": None, "removed": False}
            run.jobs = decisions.found_on_head_node(self._jobs_in_folder(ssh, run), now=_now())
            run = self._release(ssh, run)
        return {"run_dir": run.run_dir, "removed": bool(run.cluster.run_dir_removed),
                **({"note": run.release_note} if run.release_note else {})}

    def _jobs_in_folder(self, ssh, run: Run) -> dict[str, tuple[str | None, str]]:
        """{name: (scheduler id or None, result line)} of every job the run's folder shows as
        submitted, so that the cleanup keeps the results of jobs that ran (it has no record)."""
        scheduler = self.scheduler(run)
        out = ssh.run_script(jobscripts.run_jobs_script(run.run_dir))
        found = {}
        for record in jobscripts.parse_records(out.stdout):
            if record.tag != "jobrec" or len(record.fields) < 2:
                continue
            name, rc = record.fields[0], record.fields[1]
            fields = list(record.fields[2:]) + ["", ""]
            job_id = None
            if rc == "0":
                try:
                    job_id = scheduler.parse_submit(CommandOutput(jobscripts.unb64(fields[0])))
                except SchedulerError:
                    log.warning("cannot read the job id of job %s", name)
            found[name] = (job_id, jobscripts.unb64(fields[1]).strip())
        return found

    def _cancel_leftovers(self, ssh, run: Run) -> decisions.Cancellation:
        """Cancel the jobs the head node shows as submitted without a result, until the
        scheduler confirms they ended."""
        scheduler = self.scheduler(run)
        out = ssh.run_script(jobscripts.submitted_jobs_script(run.run_dir))
        leftovers, unsure = {}, []
        for record in jobscripts.parse_records(out.stdout):
            if record.tag == "unsure":
                unsure.append(record.fields[0])
            elif record.tag == "left":
                try:
                    leftovers[record.fields[0]] = scheduler.parse_submit(
                        CommandOutput(jobscripts.unb64(record.fields[1])))
                except SchedulerError:
                    log.warning("cannot read the job id of leftover job %s", record.fields[0])
        if unsure:
            # submitted (maybe) by an attempt that died before recording the id: find it by name
            try:
                leftovers.update(adoption.recover_submissions(ssh, scheduler, run.execution, unsure)[0])
            except SchedulerError as exc:
                log.warning("cannot find jobs %s by name to cancel them: %s", unsure, exc)
        if not leftovers:
            return decisions.Cancellation({}, {})
        cancel = self._cancel_until_confirmed(ssh, scheduler, leftovers)
        log.info("cancelled leftover jobs %s%s", cancel.confirmed,
                 f"; not confirmed: {cancel.unconfirmed} ({cancel.said})" if cancel.unconfirmed else "")
        return cancel

    def _cancel_until_confirmed(self, ssh, scheduler: Scheduler, jobs: dict[str, str]) -> decisions.Cancellation:
        """Cancel, then ask the scheduler about the jobs; cancel again those it still shows
        queued or running. A job is confirmed when the scheduler shows it cancelled or ended,
        or no longer knows it. One script (one SSH channel) a try."""
        left, said, silent = dict(jobs), "", False
        for pause in CANCEL_CHECK_PAUSES:
            ids = sorted(left.values())
            answer = ssh.run_script(jobscripts.commands_script(
                [("cancel", scheduler.cancel_argv(ids)), ("pause", ["sleep", str(pause)]),
                 ("status", scheduler.status_argv(ids))]), check=False)
            outputs = {r.fields[0]: jobscripts.command_output(r, 1)
                       for r in jobscripts.parse_records(answer.stdout) if r.tag == "cmd"}
            status = outputs.get("status", CommandOutput("", answer.tail(), 255))
            try:
                statuses = scheduler.parse_status(status, ids)
            except SchedulerError:
                cancel = outputs.get("cancel", status)
                silent = scheduler.unavailable(cancel) or status.exit_code != 0
                said = " ".join((status.stderr or status.stdout or cancel.stderr).split())[:300]
                continue
            left = {name: job_id for name, job_id in left.items()
                    if decisions.still_running(statuses.get(job_id))}
            if not left:
                return decisions.Cancellation(jobs, {})
            silent = False
            said = ", ".join(f"job {i} is {statuses[i].raw_state}" for i in sorted(left.values()))
        return decisions.Cancellation({n: i for n, i in jobs.items() if n not in left}, left, said, silent)


def _tally(total: int, fields) -> decisions.TaskTally:
    """An `@@tasks` record (jobscripts.inspect_script): STARTED ENDED FAILED LAST TASK EXIT SIGNAL ENDED."""
    f = [*fields, *["-"] * 8][:8]   # no result file yet: the awk printed nothing
    started, ended, failed = (int(text) if text.isdigit() else 0 for text in f[:3])
    failed_task = f[4] if f[4] != "-" else None
    return decisions.TaskTally(total, started, ended, failed, f[3] if f[3] != "-" else "",
                               failed_task, " ".join(f[5:8]) if failed_task else "")


class _NotSubmittable(Exception):
    """A job of the batch could not be staged, must not be given to the scheduler, or was
    refused by it (internal: becomes the run's failure, before anything more is submitted; with
    [order] on_failure = finish, that job's alone)."""

    def __init__(self, name: str, why: str):
        super().__init__(why)
        self.name, self.why = name, why


class _Refusals(dict):
    """{job: why} of a batch's jobs that cannot go. With [order] on_failure = finish (`alone`)
    each is noted here and the batch goes on without it; otherwise the first one raises
    _NotSubmittable (the run fails before anything more is submitted)."""

    def __init__(self, alone: bool):
        super().__init__()
        self.alone = alone

    def add(self, name: str, why: str) -> None:
        if not self.alone:
            raise _NotSubmittable(name, why)
        self[name] = why


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))
