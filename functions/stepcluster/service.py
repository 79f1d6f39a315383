"""The run's use cases, one per state machine task: each takes the run record and returns it.

The run record (`$.run` in the state machine) is small and flat enough to read in the console:

    {"execution": ..., "cluster_name": ..., "plan_digest": ..., "order": "sequential",
     "cluster": {"status": "READY", "head_node": {...}, "run_dir": ..., ...},
     "jobs": {"NAME": {"job_id", "state", "exit_code", "signal", "started", "ended", ...}},
     "next": 0, "phase": "RUNNING", "wait_seconds": 10, "failure": {"Error", "Cause"}}

Job states: NOT_STARTED PENDING RUNNING SUCCEEDED FAILED CANCELLED.
Phases the definition branches on: READY RUNNING NEXT SUCCEEDED FAILED.

Two kinds of task: the cluster's lifecycle (create, status, delete, deletion status: AWS APIs
and the cluster tools, no SSH) and the head node's work (prepare, submit, poll, cancel,
release: SSH only). paramiko is imported only by the latter, so the ParallelCluster function,
which runs on another Python with its own layer, never needs it.
"""

from __future__ import annotations

import io
import logging
import tarfile
import time
from datetime import datetime, timezone
from typing import Callable

from stepcluster import jobscripts, results, secrets, staging
from stepcluster.clusters import ClusterBackend, get_backend
from stepcluster.clusters.base import EXECUTION_TAG, RunContext, SshKey
from stepcluster.errors import ClusterError, InputError, PlanError, SchedulerError, StagingError
from stepcluster.executions import ENDED, Executions, execution_prefix
from stepcluster.keys import RunKeys
from stepcluster.plan import Plan, load_plan
from stepcluster.schedulers import Category, CommandOutput, JobStatus, Scheduler, get_scheduler
from stepcluster.settings import Settings

log = logging.getLogger("stepcluster")

ACTIVE_STATES = ("PENDING", "RUNNING")
#: A job the scheduler no longer knows, with no result file, is given this long (and at least
#: MISSING_MIN_POLLS rounds) to show its result before it is declared lost. SGE, for one,
#: drops a job from qstat about a second before qacct knows it.
MISSING_GRACE_SECONDS = 60
MISSING_MIN_POLLS = 3
STDERR_TAIL_BYTES = 2000
#: Polling slows down after this many rounds (9 history events each; 25,000 fail a run)...
POLLS_AT_WAIT_TIME = 1500
#: ...doubling its interval every this many rounds, up to MAX_WAIT_SECONDS.
POLLS_PER_DOUBLING = 50
MAX_WAIT_SECONDS = 3600
#: A job submitted (its wrapper started) that the scheduler lists nowhere is asked about again
#: this many times, this far apart, before the retried submit fails (never resubmits it).
RECOVER_ROUNDS = 5
RECOVER_WAIT_SECONDS = 2


def _now() -> int:
    return int(time.time())


def _iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunService:
    def __init__(self, settings: Settings, *, plan: Plan | None = None,
                 backend: ClusterBackend | None = None,
                 private_key: Callable[[str], str] = secrets.private_key,
                 keys: RunKeys | None = None, s3_client=None,
                 executions: Executions | None = None, cfn_client=None):
        self.settings = settings
        self._plan = plan
        self._backend = backend
        self._private_key = private_key
        self.keys = keys or RunKeys(prefix=settings.resource_prefix)
        self._s3 = s3_client
        self.executions = executions or Executions(region=settings.region)
        self._cfn = cfn_client

    # -- wiring -------------------------------------------------------------------------
    @property
    def plan(self) -> Plan:
        if self._plan is None:
            self._plan = load_plan()
        return self._plan

    @property
    def backend(self) -> ClusterBackend:
        if self._backend is None:
            self._backend = get_backend(self.settings, self.plan)
        return self._backend

    @property
    def cfn(self):
        if self._cfn is None:
            import boto3
            self._cfn = boto3.client("cloudformation", region_name=self.settings.region)
        return self._cfn

    def connect(self, run: dict):
        from stepcluster.remote.ssh import HeadNodeConnection  # paramiko: head-node tasks only

        node = self.backend.head_node(run["cluster"])
        secret = run["cluster"].get("key", {}).get("secret_arn") or self.settings.ssh_key_secret_id
        return HeadNodeConnection(node.host, node.port, node.user, self._private_key(secret),
                                  node.host_key)

    def scheduler(self, run: dict) -> Scheduler:
        return get_scheduler(run["cluster"]["head_node"]["scheduler"])

    # -- the cluster's lifecycle (no SSH) ------------------------------------------------
    def create_cluster(self, run: dict) -> dict:
        """Check the input and the plan, make the run's key, start creating the cluster."""
        import difflib
        import json

        user_input = run.get("input")
        known = ("cluster_name", "keep_cluster")    # every key read from the input
        example = 'a JSON object like {"cluster_name": "my-cluster"}'
        if not isinstance(user_input, dict):
            what = {list: "an array", str: "a string", bool: "a boolean", type(None): "null",
                    int: "a number", float: "a number"}.get(type(user_input), "not an object")
            shown = json.dumps(user_input, default=str)
            shown = shown if len(shown) <= 200 else shown[:197] + "..."
            raise InputError(f"execution input must be {example}; got {what}: {shown}")
        unknown = sorted((k for k in user_input if k not in known), key=str)
        if unknown:
            described = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), known, n=1, cutoff=0.6)
                described.append(f"{json.dumps(k)}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise InputError(f"execution input has unknown key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(described)}: the keys are {', '.join(known)}")
        if "cluster_name" not in user_input:
            raise InputError(f"execution input must be {example}: cluster_name is missing")
        keep = user_input.get("keep_cluster", False)
        if not isinstance(keep, bool):
            raise InputError(f"keep_cluster must be true or false, got {keep!r}")
        plan = self.plan
        if run.get("plan_digest") != plan.digest:
            raise PlanError(
                f"the state machine was deployed with jobs plan {run.get('plan_digest')!r} but the "
                f"functions hold plan {plan.digest!r}: run `stepcluster preprocess` and deploy again")
        if plan.backend != self.settings.backend:
            raise PlanError(f"the plan was prepared for backend {plan.backend!r} but the deployment "
                            f"uses {self.settings.backend!r}: run `stepcluster preprocess` with --backend "
                            f"{self.settings.backend}")
        ctx = RunContext(run["execution"], run.get("execution_arn") or run["execution"],
                         self.backend.check_name(user_input["cluster_name"]))
        key = self._run_key(ctx)
        try:
            cluster = self.backend.create(ctx, key)
        except Exception:
            # InputError ("name in use") skips the teardown states: leave no key behind.
            if key.owned:
                self.keys.delete(ctx.execution)
            raise
        if self.backend.creates_clusters:
            cluster["key"] = {"key_name": key.key_name, "secret_arn": key.secret_arn, "owned": key.owned}
            cluster = self._undo_if_execution_ended(ctx, cluster, key)
        new = {
            "execution": ctx.execution, "execution_arn": ctx.execution_arn,
            "cluster_name": ctx.cluster_name, "keep_cluster": keep,
            "plan_digest": plan.digest, "order": plan.order, "cluster": cluster,
            "jobs": {job.name: _new_job() for job in plan.jobs},
            "next": 0, "phase": "READY", "wait_seconds": min(j.wait_time for j in plan.jobs),
        }
        log.info("cluster %s: %s", ctx.cluster_name, cluster["status"])
        return new

    def _undo_if_execution_ended(self, ctx: RunContext, cluster: dict, key: SshKey) -> dict:
        """An abort or timeout while the cluster tool was creating the stack skips every teardown
        state, and the EventBridge cleanup it triggers may run before the stack exists (finding
        nothing), while this call goes on to create it. So, once the cluster is started, ask Step
        Functions whether this execution still runs; if it ended, delete what this call made (the
        cluster, through the backend's delete and its tag check, and the run's key), now. An
        execution that ends after this check finds the stack already there for its cleanup.

        A look-up that fails (no route to Step Functions, throttling) does not fail a run that is
        most likely alive: it is logged, and the periodic sweep catches a cluster left behind."""
        try:
            status = self.executions.status(ctx.execution_arn)
        except Exception as exc:  # noqa: BLE001 - botocore errors, an ARN that is only a name
            log.warning("cannot tell whether execution %s still runs (%s: %s); if it ended, the "
                        "periodic sweep deletes cluster %s", ctx.execution_arn, type(exc).__name__,
                        exc, ctx.cluster_name)
            return cluster
        if status not in ENDED:     # RUNNING (or about to be, PENDING_REDRIVE); None: unknown here
            return cluster
        log.warning("execution %s is %s: deleting cluster %s and the run's key it just made",
                    ctx.execution_arn, status, ctx.cluster_name)
        try:
            deleted = self.backend.delete(cluster)
        finally:
            if key.owned:
                self.keys.delete(ctx.execution)
        if key.owned:
            deleted = {**deleted, "key": {**cluster["key"], "deleted": True}}
        return {**deleted, "execution_status": status}

    def _run_key(self, ctx: RunContext) -> SshKey:
        s = self.settings
        if not self.backend.creates_clusters or s.ssh_key_name:
            return SshKey(s.ssh_key_name, s.ssh_key_secret_id, owned=False)
        return self.keys.create(ctx)

    def cluster_status(self, run: dict) -> dict:
        return {**run, "cluster": self.backend.status(run["cluster"])}

    def delete_cluster(self, run: dict) -> dict:
        """Delete the cluster (unless keep_cluster on success); a missing cluster is done."""
        cluster = run.get("cluster")
        if not cluster:                      # creation never started: nothing to delete
            return {**run, "cluster": {"status": "DELETED"}}
        if run.get("keep_cluster") and run.get("phase") == "SUCCEEDED" and "failure" not in run:
            return {**run, "cluster": {**cluster, "status": "KEPT"}}
        return self._after_deletion({**run, "cluster": self.backend.delete(cluster)})

    def deletion_status(self, run: dict) -> dict:
        return self._after_deletion({**run, "cluster": self.backend.deletion_status(run["cluster"])})

    def _after_deletion(self, run: dict) -> dict:
        """Once the cluster is gone, its key goes too (only a key made for this run)."""
        cluster = run["cluster"]
        if cluster["status"] == "DELETED" and cluster.get("key", {}).get("owned"):
            self.keys.delete(run["execution"])
            cluster = {**cluster, "key": {**cluster["key"], "deleted": True}}
        return {**run, "cluster": cluster}

    def cleanup_execution(self, execution_arn: str) -> dict:
        """After an abort or timeout (the EventBridge rule, and the sweep below): delete what is
        tagged with the execution. Idempotent."""
        execution = execution_arn.rsplit(":", 1)[-1]
        deleted = []
        if self.backend.creates_clusters:
            for cluster in self.backend.find_clusters(execution_arn):
                result = self.backend.delete(cluster)
                deleted.append({"name": cluster.get("name"), "status": result["status"]})
            self.keys.delete(execution)
            return {"execution": execution_arn, "clusters": deleted}
        # An existing head node stays; the run's jobs and folder on it do not.
        return {"execution": execution_arn, "clusters": deleted,
                "released": self._release_existing(execution)}

    def sweep(self, state_machine_arn: str) -> dict:
        """The second sweep, every CleanupSweepMinutes (template: ClusterSweepSchedule).

        The EventBridge cleanup runs once, when the execution ends, and EventBridge delivers it
        best effort; a create that was still in its cluster tool call then may make the stack
        after that cleanup looked (its own post-create check deletes it, unless the function
        died first). So this looks again, at what is still there: stacks, run key pairs and run
        secrets tagged with an execution of this state machine. For each such execution that
        ended ABORTED, TIMED_OUT or FAILED (or that Step Functions no longer knows: closed more
        than 90 days ago), cleanup_execution deletes it all, with the backend's own ownership
        check. RUNNING executions are never touched, nor SUCCEEDED ones (keep_cluster), nor
        anything untagged or tagged by another state machine.

        Finding nothing costs three list calls (CloudFormation, EC2, Secrets Manager) and never
        builds the backend: the ParallelCluster function imports pcluster.lib only when there
        is something to delete.
        """
        prefix = execution_prefix(state_machine_arn)
        result = {"state_machine": state_machine_arn, "swept": [], "kept": []}
        if self.settings.backend == "existing":     # nothing is created, so nothing to sweep
            return result
        tagged = self._tagged_stack_executions(prefix) | self.keys.tagged_executions(prefix)
        errors = []
        for arn in sorted(tagged):
            try:
                status = self.executions.status(arn)
                if status is not None and status not in ENDED:
                    result["kept"].append({"execution": arn, "status": status})
                    continue
                log.info("sweep: execution %s is %s: deleting what carries its tag", arn, status or "gone")
                result["swept"].append({**self.cleanup_execution(arn), "status": status or "GONE"})
            except Exception as exc:  # noqa: BLE001 - one execution's failure must not stop the rest
                log.exception("sweep: cleaning up after %s failed", arn)
                errors.append(f"{arn}: {type(exc).__name__}: {exc}")
        if errors:
            # A function error: visible in the function's Errors metric; the next sweep tries again.
            raise ClusterError("the sweep could not clean up after " + "; ".join(errors)[:2000])
        return result

    def _tagged_stack_executions(self, prefix: str) -> set[str]:
        """Execution ARNs starting with `prefix` on live top-level stacks (one DescribeStacks
        listing: no cluster tool). Stacks already being deleted are left to finish."""
        found = set()
        for page in self.cfn.get_paginator("describe_stacks").paginate():
            for stack in page.get("Stacks") or []:
                if stack.get("ParentId") or stack.get("StackStatus") in ("DELETE_COMPLETE", "DELETE_IN_PROGRESS"):
                    continue
                value = next((t.get("Value") or "" for t in stack.get("Tags") or []
                              if t.get("Key") == EXECUTION_TAG), "")
                if value.startswith(prefix):
                    found.add(value)
        return found

    def _release_existing(self, execution: str) -> str | None:
        node = self.backend.head_node({})
        run = {"execution": execution, "cluster": {"status": "READY", "head_node": {"scheduler": node.scheduler}}}
        with self.connect(run) as ssh:
            found = ssh.run_script(jobscripts.find_run_script(self.settings.remote_root, execution))
            run_dir = next((" ".join(r.fields) for r in jobscripts.parse_records(found.stdout)
                            if r.tag == "run_dir"), None)
        if run_dir is not None:
            self.release_head_node({**run, "cluster": {**run["cluster"], "run_dir": run_dir}})
        return run_dir

    # -- the head node's work (SSH) ------------------------------------------------------
    def prepare_head_node(self, run: dict) -> dict:
        """Check the scheduler answers; make the run's folder."""
        cluster = run["cluster"]
        if cluster.get("run_dir"):
            return run
        scheduler = self.scheduler(run)
        script = jobscripts.prepare_run_script(scheduler.name, scheduler.probe_argv(),
                                               self.settings.remote_root, run["execution"])
        with self.connect(run) as ssh:
            result = ssh.run_script(script)
        run_dir = next(" ".join(r.fields) for r in jobscripts.parse_records(result.stdout)
                       if r.tag == "run_dir")
        return {**run, "cluster": {**cluster, "run_dir": run_dir}}

    # -- Submit Jobs ---------------------------------------------------------------------
    def submit_jobs(self, run: dict) -> dict:
        """Stage and submit the next job (sequential) or all jobs (parallel)."""
        with self.connect(run) as ssh:
            return self._submit(_copy(run), ssh)

    def _submit(self, run: dict, ssh) -> dict:
        plan = self.plan
        if run["order"] == "sequential":
            batch = [plan.jobs[run["next"]]]
            run["next"] += 1
        else:
            batch = [job for job in plan.jobs if run["jobs"][job.name]["state"] == "NOT_STARTED"]
        run_dir = run["cluster"]["run_dir"]
        scheduler = self.scheduler(run)

        # Stage everything first: a job whose files cannot be staged fails the run before
        # anything of this batch reaches the scheduler.
        by_head_node = self.settings.staging == "head-node"
        bundle, fetches = io.BytesIO(), []
        with tarfile.open(fileobj=bundle, mode="w:gz") as tar:
            for job in batch:
                try:
                    if by_head_node:
                        fetches.append(staging.fetch_script(
                            plan, job, job_dir=jobscripts.job_dir(run_dir, job.name),
                            s3_client=self._s3, artifacts_bucket=self.settings.artifacts_bucket))
                    else:
                        staging.add_job_files(tar, plan, job, s3_client=self._s3)
                except StagingError as exc:
                    return self._fail_before_submit(run, job.name, str(exc))
                wrapper = jobscripts.wrapper_script(
                    run_dir=run_dir, name=job.name, handler=job.handler,
                    env={"STEPCLUSTER_JOB_NAME": job.name, "STEPCLUSTER_EXECUTION": run["execution"],
                         "STEPCLUSTER_CLUSTER_NAME": run["cluster_name"]})
                _add_bytes(tar, f"jobs/{job.name}/run.sh", wrapper.encode(), 0o755)

        submissions = []
        for job in batch:
            d = jobscripts.job_dir(run_dir, job.name)
            submissions.append((job.name, scheduler.submit_argv(
                f"{d}/run.sh", job_name=jobscripts.submission_name(run["execution"], job.name),
                workdir=f"{d}/src",
                stdout=f"{d}/stdout", stderr=f"{d}/stderr")))
        ssh.run(["tar", "-xzf", "-", "-C", run_dir], stdin=bundle.getvalue())
        if fetches:
            failed = self._fetch_on_head_node(ssh, batch, fetches)
            if failed:
                return self._fail_before_submit(run, *failed)
        script = jobscripts.submit_script(run_dir, submissions)
        result = ssh.run_script(script)
        unsure = {r.fields[0]: r.fields[1:] == ("ran",)
                  for r in jobscripts.parse_records(result.stdout) if r.tag == "unsure"}
        if unsure:
            # An earlier attempt died while submitting these: adopt what the scheduler has by
            # their names, then submit (again) only those it verifiably does not know.
            adopted, not_known = self._recover_submissions(
                ssh, scheduler, run, list(unsure), ran={n for n, ran in unsure.items() if ran})
            ssh.run_script(jobscripts.recovery_script(run_dir, adopted, not_known))
            result = ssh.run_script(script)
            still = [r.fields[0] for r in jobscripts.parse_records(result.stdout) if r.tag == "unsure"]
            if still:
                raise SchedulerError(f"cannot tell whether jobs {still} were submitted: {result.tail()}")
        for record in jobscripts.parse_records(result.stdout):
            if record.tag != "submit":
                continue
            name, rc = record.fields[0], int(record.fields[1])
            out = CommandOutput(jobscripts.unb64(record.fields[2]), jobscripts.unb64(record.fields[3]), rc)
            job = run["jobs"][name]
            if rc != 0:
                return self._fail_before_submit(
                    run, name, f"{scheduler.name} refused the job (exit {rc}): {out.stderr.strip() or out.stdout.strip()}")
            _set(job, job_id=scheduler.parse_submit(out), state="PENDING")
            log.info("job %s submitted as %s", name, job["job_id"])
        missing = [job.name for job in batch if run["jobs"][job.name]["state"] == "NOT_STARTED"]
        if missing:
            raise SchedulerError(f"the submit script reported nothing for jobs {missing}: {result.tail()}")
        run["phase"] = "RUNNING"
        run["wait_seconds"] = self._wait_seconds(run)
        return run

    def _recover_submissions(self, ssh, scheduler: Scheduler, run: dict, names: list[str],
                             ran: set[str] = frozenset()) -> tuple[dict[str, str], list[str]]:
        """Ask the scheduler, by each job's submission name, whether it has it.

        Returns ({job name: adopted id}, [job names it verifiably does not know]). SchedulerError
        when it cannot tell (not answering, or several jobs by one name): never a guess.

        A job in `ran` (its wrapper started: it was submitted) that the scheduler does not list
        is between two of its views (Grid Engine: gone from qstat, not yet in qacct, about a
        second): asked again, RECOVER_ROUNDS times RECOVER_WAIT_SECONDS apart, then an error."""
        adopted, not_known, pending = {}, [], list(names)
        for round_ in range(RECOVER_ROUNDS):
            if round_:
                time.sleep(RECOVER_WAIT_SECONDS)
            found, unknown = self._ask_by_name(ssh, scheduler, run, pending)
            adopted.update(found)
            not_known += [n for n in unknown if n not in ran]
            pending = [n for n in unknown if n in ran]
            if not pending:
                return adopted, not_known
        raise SchedulerError(f"jobs {pending} were submitted (their wrappers started) but {scheduler.name} "
                             f"lists no job by their names: not submitting them again")

    def _ask_by_name(self, ssh, scheduler: Scheduler, run: dict,
                     names: list[str]) -> tuple[dict[str, str], list[str]]:
        commands = []
        for name in names:
            argv = scheduler.recover_argv(jobscripts.submission_name(run["execution"], name))
            if argv is None:
                raise SchedulerError(f"job {name!r} may have been submitted by an earlier attempt, and "
                                     f"{scheduler.name} cannot be asked by name: not submitting it again")
            commands.append((name, argv))
        out = ssh.run_script(jobscripts.commands_script(commands))
        answers = {r.fields[0]: CommandOutput(jobscripts.unb64(r.fields[2]), jobscripts.unb64(r.fields[3]),
                                              int(r.fields[1]))
                   for r in jobscripts.parse_records(out.stdout) if r.tag == "cmd" and len(r.fields) == 4}
        adopted, not_known = {}, []
        for name in names:
            if name not in answers:
                raise SchedulerError(f"no answer from {scheduler.name} about job {name!r}: {out.tail()}")
            sched_name = jobscripts.submission_name(run["execution"], name)
            ids = scheduler.parse_recover(answers[name], sched_name)
            if len(ids) > 1:
                raise SchedulerError(f"{scheduler.name} has several jobs named {sched_name!r} ({', '.join(ids)}): "
                                     "not choosing one")
            if ids:
                if scheduler.parse_submit(CommandOutput(ids[0] + "\n")) != ids[0]:
                    raise SchedulerError(f"{scheduler.name} id {ids[0]!r} of job {name!r} would not read back")
                adopted[name] = ids[0]
                log.warning("job %s was submitted by an earlier attempt as %s (%s): adopted",
                            name, ids[0], sched_name)
            else:
                not_known.append(name)
                log.warning("job %s: an earlier attempt died submitting it and %s does not know %s",
                            name, scheduler.name, sched_name)
        return adopted, not_known

    def _fetch_on_head_node(self, ssh, batch, fetches) -> tuple[str, str] | None:
        """Run the download scripts; (job name, why) of the first job whose files did not come."""
        result = ssh.run_script("".join(f"(\n{f})\n" for f in fetches), check=False)
        fetched = {r.fields[0]: r.fields[1] for r in jobscripts.parse_records(result.stdout)
                   if r.tag == "fetched"}
        for job in batch:
            if fetched.get(job.name) != "0":
                return job.name, ("the head node could not download its files (does it reach S3?): "
                                  + (result.tail(5) or "no output"))
        return None

    def _fail_before_submit(self, run: dict, name: str, why: str) -> dict:
        _set(run["jobs"][name], state="FAILED", reason=why, ended=_iso(_now()))
        run["phase"] = "FAILED"
        run["failure"] = {"Error": "JobFailed", "Cause": f"Job {name!r} failed before submission: {why}"}
        return run

    # -- Poll Jobs -----------------------------------------------------------------------
    def poll_jobs(self, run: dict) -> dict:
        """One round: one SSH connection, every job in flight."""
        run = _copy(run)
        run["polls"] = run.get("polls", 0) + 1
        scheduler = self.scheduler(run)
        run_dir = run["cluster"]["run_dir"]
        active = [n for n, j in run["jobs"].items() if j["state"] in ACTIVE_STATES]
        ids = [run["jobs"][n]["job_id"] for n in active]
        with self.connect(run) as ssh:
            result = ssh.run_script(jobscripts.inspect_script(
                run_dir, active, scheduler.status_argv(ids) if ids else None))
            files, statuses = {}, {}
            for record in jobscripts.parse_records(result.stdout):
                if record.tag == "job":
                    files[record.fields[0]] = (jobscripts.unb64(record.fields[1]).strip(),
                                               jobscripts.unb64(record.fields[2]).strip())
                elif record.tag == "status":
                    statuses = scheduler.parse_status(CommandOutput(
                        jobscripts.unb64(record.fields[1]), jobscripts.unb64(record.fields[2]),
                        int(record.fields[0])), ids)
            # Jobs gone from the live queue without a result: ask the scheduler's history.
            gone = [n for n in active if not files.get(n, ("", ""))[1]
                    and statuses.get(run["jobs"][n]["job_id"], _missing(run["jobs"][n]["job_id"])).category
                    in (Category.MISSING, Category.SUCCEEDED)]
            history = self._accounting(ssh, scheduler, [run["jobs"][n]["job_id"] for n in gone])
            for name in active:
                started, result_line = files.get(name, ("", ""))
                job_id = run["jobs"][name]["job_id"]
                status = history.get(job_id) or statuses.get(job_id) or _missing(job_id)
                self._update_job(run["jobs"][name], name, scheduler, started, result_line, status)
            failed = [n for n in active if run["jobs"][n]["state"] in ("FAILED", "CANCELLED")]
            tails = self._stderr_tails(ssh, run_dir, failed) if failed else {}
            run = self._advance(run, failed, tails, scheduler)
            if run["phase"] == "NEXT":
                # Sequential: the next job goes out in this round, on this connection (saves a
                # Submit Jobs state, a Lambda call and an SSH connection per job).
                run = self._submit(run, ssh)
        return run

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
                status = scheduler.parse_accounting(CommandOutput(
                    jobscripts.unb64(record.fields[2]), jobscripts.unb64(record.fields[3]),
                    int(record.fields[1])), job_id)
                if status.category != Category.MISSING:
                    history[job_id] = status
        return history

    def _update_job(self, job: dict, name: str, scheduler: Scheduler, started: str,
                    result_line: str, status: JobStatus) -> None:
        if started.isdigit():
            job["started"] = _iso(int(started))
        if result_line:
            # The wrapper's record is final, whatever the scheduler shows meanwhile.
            code, signal, ended = (result_line.split() + ["", "", ""])[:3]
            _set(job, exit_code=int(code), signal=int(signal) or None,
                 ended=_iso(int(ended)) if ended.isdigit() else None,
                 state="SUCCEEDED" if code == "0" else "FAILED",
                 scheduler_state=None, reason=None, missing_since=None, missing_polls=None)
            return
        category = status.category
        if category == Category.UNKNOWN:
            raise SchedulerError(
                f"job {name!r} ({scheduler.name} job {job['job_id']}) is in state {status.raw_state!r}, "
                f"which the {scheduler.name} adapter does not know: refusing to guess")
        if category in (Category.QUEUED, Category.RUNNING):
            reason = status.reason if status.reason not in ("None", "(null)", "") else None
            _set(job, state="PENDING" if category == Category.QUEUED else "RUNNING",
                 scheduler_state=status.raw_state, reason=reason)
            self._check_blocked(job, status)
            return
        if category in (Category.FAILED, Category.CANCELLED):
            # Ended without the wrapper recording it: killed, cancelled, node failure...
            _set(job, state="FAILED" if category == Category.FAILED else "CANCELLED",
                 scheduler_state=status.raw_state, exit_code=status.exit_code,
                 signal=status.signal, ended=_iso(_now()), reason=status.reason or None)
            return
        # MISSING, or SUCCEEDED without a result file: still finishing, for a bounded time.
        now = _now()
        job.setdefault("missing_since", now)
        job["missing_polls"] = job.get("missing_polls", 0) + 1
        if now - job["missing_since"] >= MISSING_GRACE_SECONDS and job["missing_polls"] >= MISSING_MIN_POLLS:
            _set(job, state="FAILED", scheduler_state=status.raw_state or "MISSING", ended=_iso(now),
                 reason=f"{scheduler.name} no longer knows the job and its wrapper recorded "
                              f"no exit code within {MISSING_GRACE_SECONDS} s")

    def _check_blocked(self, job: dict, status: JobStatus) -> None:
        """A job the scheduler says cannot start by itself (held, impossible request, failed
        dependency) fails after a bounded time instead of being polled for ever."""
        if not status.blocked:
            _set(job, blocked_since=None)
            return
        now = _now()
        job.setdefault("blocked_since", now)
        limit = self.settings.blocked_job_timeout_seconds
        if now - job["blocked_since"] >= limit:
            _set(job, state="FAILED", ended=_iso(now), blocked_since=None,
                 reason=f"cannot start by itself ({status.blocked}) and did not within {limit} s")

    def _stderr_tails(self, ssh, run_dir: str, names: list[str]) -> dict[str, str]:
        out = ssh.run_script(jobscripts.tails_script(run_dir, names, STDERR_TAIL_BYTES), check=False)
        return {r.fields[0]: jobscripts.unb64(r.fields[1]) for r in jobscripts.parse_records(out.stdout)
                if r.tag == "tail" and len(r.fields) > 1}

    def _advance(self, run: dict, failed: list[str], tails: dict[str, str], scheduler: Scheduler) -> dict:
        if failed:
            name = failed[0]
            run["phase"] = "FAILED"
            run["failure"] = {"Error": "JobFailed",
                              "Cause": describe_failure(name, run["jobs"][name], scheduler.name, tails.get(name, ""))}
        elif any(j["state"] in ACTIVE_STATES for j in run["jobs"].values()):
            run["phase"] = "RUNNING"
        elif run["order"] == "sequential" and run["next"] < len(run["jobs"]):
            run["phase"] = "NEXT"
        else:
            run["phase"] = "SUCCEEDED"
        run["wait_seconds"] = self._wait_seconds(run)
        return run

    def _wait_seconds(self, run: dict) -> int:
        """The smallest wait_time among the jobs in flight (or about to be).

        A polling round costs 9 history events, and an execution that passes 25,000 fails.
        After POLLS_AT_WAIT_TIME rounds the interval doubles every POLLS_PER_DOUBLING rounds
        (up to an hour), so a run whose jobs outlast their wait_time budget slows its polling
        instead of failing: at wait_time 1 that starts after 25 minutes of polling; from there
        the interval reaches an hour within 600 rounds, which leaves about 700 hourly rounds.
        """
        waits = [job.wait_time for job in self.plan.jobs if run["jobs"][job.name]["state"] in ACTIVE_STATES]
        wait = min(waits) if waits else min(job.wait_time for job in self.plan.jobs)
        polls = run.get("polls", 0)
        if polls >= POLLS_AT_WAIT_TIME:
            wait = min(MAX_WAIT_SECONDS, wait * 2 ** ((polls - POLLS_AT_WAIT_TIME) // POLLS_PER_DOUBLING + 1))
        return wait

    # -- Cancel Jobs / Delete Cluster ----------------------------------------------------
    def cancel_jobs(self, run: dict) -> dict:
        """Cancel every job of the run still queued or running (known to the payload or not)."""
        run = _copy(run)
        if not run.get("cluster", {}).get("run_dir") or run["cluster"].get("status") != "READY":
            return run
        with self.connect(run) as ssh:
            cancelled = self._cancel_leftovers(ssh, run)
        now = _iso(_now())
        for name, job in run.get("jobs", {}).items():
            if job["state"] in ACTIVE_STATES or (job["state"] == "NOT_STARTED" and name in cancelled):
                _set(job, state="CANCELLED", ended=now)
        return run

    def release_head_node(self, run: dict) -> dict:
        """Keep the results, then leave the head node as the run found it.

        Cancels leftover jobs (so nothing writes any more), copies every started job's stdout,
        stderr, exit record and output folder to the artifacts bucket, then removes the run's
        folder. On every path: the cluster, and all on it, is deleted next.
        """
        run = _copy(run)
        cluster = run.get("cluster") or {}
        if cluster.get("run_dir") and cluster.get("status") == "READY":
            with self.connect(run) as ssh:
                self._cancel_leftovers(ssh, run)
                if self.settings.artifacts_bucket:
                    run["results"] = results.collect(ssh, run, self.settings.artifacts_bucket, s3_client=self._s3)
                ssh.run(["rm", "-rf", "--", cluster["run_dir"]])
            run["cluster"] = {**cluster, "run_dir_removed": True}
        return run

    def _cancel_leftovers(self, ssh, run: dict) -> list[str]:
        """Cancel jobs the head node shows as submitted without a result; return their names."""
        scheduler = self.scheduler(run)
        out = ssh.run_script(jobscripts.submitted_jobs_script(run["cluster"]["run_dir"]))
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
        if unsure and run.get("execution"):
            # submitted (maybe) by an attempt that died before recording the id: find it by name
            try:
                leftovers.update(self._recover_submissions(ssh, scheduler, run, unsure)[0])
            except SchedulerError as exc:
                log.warning("cannot find jobs %s by name to cancel them: %s", unsure, exc)
        if leftovers:
            ssh.run(scheduler.cancel_argv(sorted(leftovers.values())), check=False)
            log.info("cancelled leftover jobs %s", leftovers)
        return list(leftovers)


def describe_failure(name: str, job: dict, scheduler: str, stderr_tail: str) -> str:
    """The failure cause: job, scheduler id, final state, exit code or signal, stderr tail."""
    parts = [f"Job {name!r} ({scheduler} job {job.get('job_id')}) ended {job['state']}"]
    if job.get("scheduler_state"):
        parts.append(f"(scheduler state {job['scheduler_state']})")
    if job.get("signal"):
        parts.append(f"killed by signal {job['signal']}")
    elif job.get("exit_code") is not None:
        parts.append(f"with exit code {job['exit_code']}")
    text = " ".join(parts)
    if job.get("reason"):
        text += f"; reason: {job['reason']}"
    if stderr_tail.strip():
        text += f"\nLast lines of its stderr:\n{stderr_tail.strip()}"
    return text


def _new_job() -> dict:
    return {"state": "NOT_STARTED"}


def _set(job: dict, **fields) -> None:
    """Update a job record, dropping empty fields: with 1,000 jobs the record must stay far
    below Step Functions' 256 KiB payload limit, so absent means none."""
    for key, value in fields.items():
        if value is None:
            job.pop(key, None)
        else:
            job[key] = value


def _missing(job_id: str) -> JobStatus:
    return JobStatus(job_id, Category.MISSING, "")


def _copy(run: dict) -> dict:
    return {**run, "jobs": {n: dict(j) for n, j in run.get("jobs", {}).items()}}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))
