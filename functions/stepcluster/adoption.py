"""Jobs an earlier attempt submitted but did not record: found by their submission name.

A Submit Jobs (or the polling round that submits the next sequential job) can die between the
scheduler accepting a job and the id reaching the head node's `submit.rc` (Lambda timeout, a
dropped connection). The submit script records an intent before submitting, so a retry knows
which jobs are in doubt; each was submitted under a per-execution name
(`jobscripts.submission_name`), so the retry asks the scheduler for that name and adopts what
it finds. A job is submitted again only when the scheduler verifiably does not know it; when
it cannot tell, the retry fails rather than guess (a duplicate would run twice and be left
running after the run).
"""

from __future__ import annotations

import time

from stepcluster import jobscripts, logs
from stepcluster.errors import SchedulerError
from stepcluster.schedulers import CommandOutput, Scheduler

log = logs.logger(__name__)

#: A job submitted (its wrapper started) that the scheduler lists nowhere is asked about again
#: this many times, this far apart, before the retried submit fails (never resubmits it).
RECOVER_ROUNDS = 5
RECOVER_WAIT_SECONDS = 2


def recover_submissions(ssh, scheduler: Scheduler, execution: str, names: list[str],
                        ran: set[str] = frozenset(),
                        attempts: dict[str, int] | None = None) -> tuple[dict[str, str], list[str]]:
    """Ask the scheduler, by each job's submission name (of its attempt: `attempts`, 1 when
    not given), whether it has it.

    Returns ({job name: adopted id}, [job names it verifiably does not know]). SchedulerError
    when it cannot tell (not answering, or several jobs by one name): never a guess.

    A job in `ran` (its wrapper started: it was submitted) that the scheduler does not list
    is between two of its views (Grid Engine: gone from qstat, not yet in qacct, about a
    second): asked again, RECOVER_ROUNDS times RECOVER_WAIT_SECONDS apart, then an error."""
    adopted, not_known, pending = {}, [], list(names)
    for round_ in range(RECOVER_ROUNDS):
        if round_:
            time.sleep(RECOVER_WAIT_SECONDS)
        found, unknown = _ask_by_name(ssh, scheduler, execution, pending, attempts or {})
        adopted.update(found)
        not_known += [n for n in unknown if n not in ran]
        pending = [n for n in unknown if n in ran]
        if not pending:
            return adopted, not_known
    raise SchedulerError(f"jobs {pending} were submitted (their wrappers started) but {scheduler.name} "
                         f"lists no job by their names: not submitting them again", scheduler=scheduler.name)


def _ask_by_name(ssh, scheduler: Scheduler, execution: str, names: list[str],
                 attempts: dict[str, int]) -> tuple[dict[str, str], list[str]]:
    commands = []
    for name in names:
        argv = scheduler.recover_argv(jobscripts.submission_name(execution, name, attempts.get(name, 1)))
        if argv is None:
            raise SchedulerError(f"job {name!r} may have been submitted by an earlier attempt, and "
                                 f"{scheduler.name} cannot be asked by name: not submitting it again",
                                 scheduler=scheduler.name)
        commands.append((name, argv))
    out = ssh.run_script(jobscripts.commands_script(commands))
    answers = {r.fields[0]: jobscripts.command_output(r, 1) for r in jobscripts.parse_records(out.stdout)
               if r.tag == "cmd" and len(r.fields) == 4}
    adopted, not_known = {}, []
    for name in names:
        if name not in answers:
            raise SchedulerError(f"no answer from {scheduler.name} about job {name!r}: {out.tail()}",
                                 scheduler=scheduler.name)
        sched_name = jobscripts.submission_name(execution, name, attempts.get(name, 1))
        ids = scheduler.parse_recover(answers[name], sched_name)
        if len(ids) > 1:
            raise SchedulerError(f"{scheduler.name} has several jobs named {sched_name!r} ({', '.join(ids)}): "
                                 "not choosing one", scheduler=scheduler.name, output=answers[name],
                                 job_ids=ids)
        if ids:
            if scheduler.parse_submit(CommandOutput(ids[0] + "\n")) != ids[0]:
                raise SchedulerError(f"{scheduler.name} id {ids[0]!r} of job {name!r} would not read back",
                                     scheduler=scheduler.name, output=answers[name], job_ids=ids)
            adopted[name] = ids[0]
            log.warning("job %s was submitted by an earlier attempt as %s (%s): adopted",
                        name, ids[0], sched_name)
        else:
            not_known.append(name)
            log.warning("job %s: an earlier attempt died submitting it and %s does not know %s",
                        name, scheduler.name, sched_name)
    return adopted, not_known
