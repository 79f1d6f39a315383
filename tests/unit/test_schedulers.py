"""Scheduler adapters against outputs recorded from a real Slurm 22.05 and Son of Grid Engine
8.1.9 (tests/fixtures/schedulers/{slurm,sge}, re-record with record_fixtures.py there) and
against Torque outputs written from its documentation (tests/fixtures/schedulers/torque).

No cluster needed: the shell snippets some adapters send are run here against fake commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from stepcluster.errors import SchedulerError
from stepcluster.schedulers import get_scheduler
from stepcluster.schedulers.base import ACTIVE, TERMINAL, Category, CommandOutput, JobStatus, Scheduler
from stepcluster.schedulers import sge as sge_module
from stepcluster.schedulers import slurm as slurm_module
from stepcluster.schedulers.sge import SGE
from stepcluster.schedulers.slurm import Slurm
from stepcluster.schedulers.torque import BLOCKING_HOLD_TYPES, JOB_EXEC_CODES, Torque, parse_full

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "schedulers"
ADAPTERS = {"slurm": Slurm(), "sge": SGE(), "torque": Torque()}


def load(scheduler: str, name: str) -> tuple[dict, CommandOutput]:
    doc = json.loads((FIXTURES / scheduler / f"{name}.json").read_text())
    return doc, CommandOutput(doc["stdout"], doc["stderr"], doc["exit_code"])


def status_of(scheduler: str, name: str):
    doc, out = load(scheduler, name)
    result = ADAPTERS[scheduler].parse_status(out, doc["job_ids"])
    assert set(result) == set(doc["job_ids"])
    return doc["jobs"], result


# ---------------------------------------------------------------------------- all adapters
def one_job_output(scheduler: str, state: str) -> tuple[CommandOutput, str]:
    """The status command's output for one job in `state`, in the scheduler's own format."""
    if scheduler == "slurm":
        return CommandOutput(f"42|{state}|4294901000|UNLIMITED|0|None\n"), "42"
    if scheduler == "sge":
        xml = ("<?xml version='1.0'?>\n<job_info>\n  <queue_info>\n  </queue_info>\n  <job_info>\n"
               f"    <job_list state=\"pending\">\n      <JB_job_number>42</JB_job_number>\n"
               f"      <state>{state}</state>\n    </job_list>\n  </job_info>\n</job_info>\n")
        return CommandOutput(xml), "42"
    return CommandOutput(f"Job Id: 42.head\n    Job_Name = x\n    job_state = {state}\n"), "42.head"


def _meanings(**groups: str) -> dict[str, Category]:
    return {word: Category[category] for category, words in groups.items() for word in words.split()}


#: What each state word means, written from the schedulers' documentation, not from the
#: adapters' tables: the tables are checked against this, so a word mapped to the wrong
#: meaning (PREEMPTED as active, Eqw as queued...) fails here.
DOCUMENTED = {
    # squeue(1) JOB STATE CODES; sacct(1) JOB STATE CODES
    "slurm": _meanings(
        QUEUED="PENDING CONFIGURING REQUEUED REQUEUE_FED REQUEUE_HOLD RESV_DEL_HOLD",
        RUNNING="RUNNING COMPLETING SUSPENDED STOPPED RESIZING SIGNALING STAGE_OUT",
        SUCCEEDED="COMPLETED",
        FAILED="FAILED TIMEOUT NODE_FAIL OUT_OF_MEMORY BOOT_FAIL DEADLINE PREEMPTED SPECIAL_EXIT REVOKED",
        CANCELLED="CANCELLED"),
    # qstat(1) of Son of Grid Engine: q queued, w waiting, h hold, r running, t transferring,
    # R restarted, s/S/T suspended, E error (never runs by itself), d deleted; z: finished, in qacct
    "sge": _meanings(
        QUEUED="qw Rq hqw hRwq",
        RUNNING="r hr t Rr Rt s ts S tS T tT Rs Rts RS RtS RT RtT",
        FAILED="Eqw Ehqw EhRqw",
        CANCELLED="dr dt dRr dRt ds dS dT dRs dRS dRT",
        MISSING="z"),
    # qstat -f job_state (Torque): Q queued, H held, W waiting, T transiting, R running,
    # E exiting, S suspended, C completed (success only with exit_status 0, decided elsewhere)
    "torque": _meanings(QUEUED="Q H W T", RUNNING="R E S", FAILED="C"),
}
STATE_CASES = [(name, state) for name, table in DOCUMENTED.items() for state in table]


@pytest.mark.parametrize("scheduler", ADAPTERS)
def test_each_adapter_knows_exactly_the_documented_state_words(scheduler):
    assert set(ADAPTERS[scheduler].STATES) == set(DOCUMENTED[scheduler])


@pytest.mark.parametrize("scheduler,state", STATE_CASES, ids=[f"{n}-{s}" for n, s in STATE_CASES])
def test_every_table_entry_goes_through_parse_status(scheduler, state):
    adapter = ADAPTERS[scheduler]
    out, job_id = one_job_output(scheduler, state)
    status = adapter.parse_status(out, [job_id])[job_id]
    assert status.category == DOCUMENTED[scheduler][state]
    assert status.raw_state == state
    assert status.job_id == job_id
    # a state word alone blocks only for Slurm's hold states and Grid Engine's stuck transfers;
    # other holds need more (hold lists, Hold_Types), which this bare output does not give
    assert (status.blocked is not None) == ((scheduler == "slurm" and state in slurm_module.BLOCKED_STATES)
                                            or (scheduler == "sge" and state in ("t", "Rt")))


@pytest.mark.parametrize("scheduler", ADAPTERS)
@pytest.mark.parametrize("word", ["NEVER_SEEN", "Xqw", "Z"])
def test_a_state_never_seen_is_unknown_with_its_raw_text(scheduler, word):
    adapter = ADAPTERS[scheduler]
    assert word not in adapter.STATES
    out, job_id = one_job_output(scheduler, word)
    status = adapter.parse_status(out, [job_id])[job_id]
    assert status.category == Category.UNKNOWN
    assert status.raw_state == word
    assert adapter.categorize(word) == Category.UNKNOWN


@pytest.mark.parametrize("scheduler", ADAPTERS)
def test_tables_are_data_and_never_map_to_unknown(scheduler):
    adapter = ADAPTERS[scheduler]
    assert adapter.name == scheduler
    assert isinstance(adapter, Scheduler)
    assert isinstance(get_scheduler(scheduler), type(adapter))
    assert Category.UNKNOWN not in adapter.STATES.values()
    # success is only ever a scheduler word that means "ended with exit 0"
    assert [s for s, c in adapter.STATES.items() if c == Category.SUCCEEDED] == (
        ["COMPLETED"] if scheduler == "slurm" else [])


VALID_IDS = {"slurm": ["1", "22", "333_4"], "sge": ["1", "22"], "torque": ["1", "22.head", "3[]", "4[5].head.example.com"]}


@pytest.mark.parametrize("scheduler", ADAPTERS)
def test_ids_are_validated_and_lists_must_not_be_empty(scheduler):
    adapter = ADAPTERS[scheduler]
    for build in (adapter.status_argv, adapter.cancel_argv):
        with pytest.raises(SchedulerError, match="no .* job ids given") as caught:
            build([])
        assert caught.value.scheduler == scheduler
    for bad in ("1; rm -rf /", "$(id)", "12 13", "-1", "", "12,13"):
        for build in (adapter.status_argv, adapter.cancel_argv):
            with pytest.raises(SchedulerError, match="job ids") as caught:
                build(["7", bad])
            assert (caught.value.scheduler, caught.value.job_ids) == (scheduler, (bad,))
    # every id of the adapter's own shapes goes through, as strings, in order
    assert adapter.cancel_argv(VALID_IDS[scheduler])[-len(VALID_IDS[scheduler]):] == VALID_IDS[scheduler]
    assert adapter.cancel_argv([5])[-1] == "5"


@pytest.mark.parametrize("scheduler", ADAPTERS)
@pytest.mark.parametrize("bad", ["123\n", "123\n456", " 123", "123 ", "123\t", "\n123"])
def test_an_id_with_whitespace_or_a_newline_is_refused_everywhere(scheduler, bad):
    # regression: the id patterns end in "$", which re.match lets through before a final newline
    adapter = ADAPTERS[scheduler]
    builders = [adapter.status_argv, adapter.cancel_argv]
    if adapter.accounting_argv("1" if scheduler != "torque" else "1.head") is not None:
        builders.append(lambda ids: adapter.accounting_argv(ids[0]))
    for build in builders:
        with pytest.raises(SchedulerError) as caught:
            build([bad])
        assert caught.value.scheduler == scheduler and caught.value.job_ids == (bad,)


def test_unknown_scheduler_names_are_a_scheduler_error():
    for name in ("pbs", "SLURM", "", "slurm "):
        with pytest.raises(SchedulerError, match="expected one of sge, slurm, torque") as caught:
            get_scheduler(name)
        assert caught.value.scheduler == name
        assert repr(name) in str(caught.value)
    assert [type(get_scheduler(n)) for n in ("slurm", "sge", "torque")] == [Slurm, SGE, Torque]
    assert get_scheduler("slurm") is not get_scheduler("slurm")     # a fresh adapter each time


@pytest.mark.parametrize("scheduler", ADAPTERS)
def test_output_that_is_not_a_job_id_raises_with_the_raw_text(scheduler):
    with pytest.raises(SchedulerError, match="gibberish output"):
        ADAPTERS[scheduler].parse_submit(CommandOutput("gibberish output\n", "some stderr", 0))
    with pytest.raises(SchedulerError, match="some stderr"):
        ADAPTERS[scheduler].parse_submit(CommandOutput("", "some stderr", 1))


# ---------------------------------------------------------------------------- Slurm
def test_slurm_table_covers_every_documented_state():
    assert set(Slurm.STATES) >= {
        "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
        "REQUEUE_HOLD", "RESIZING", "STOPPED", "SIGNALING", "STAGE_OUT", "COMPLETED", "FAILED",
        "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
        "SPECIAL_EXIT", "REVOKED"}
    assert {s for s, c in Slurm.STATES.items() if c in ACTIVE} >= {
        "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
        "REQUEUE_HOLD", "RESIZING", "STOPPED", "SIGNALING", "STAGE_OUT"}


def test_slurm_submit():
    s = Slurm()
    assert s.submit_argv("/r/run.sh", job_name="a-b_1", workdir="/r/src", stdout="/r/out",
                         stderr="/r/err") == [
        "sbatch", "--parsable", "-J", "a-b_1", "-D", "/r/src", "-o", "/r/out", "-e", "/r/err", "/r/run.sh"]
    _, out = load("slurm", "submit")
    assert s.parse_submit(out) == out.stdout.strip()
    assert s.parse_submit(CommandOutput("123;rig\n")) == "123"
    _, out = load("slurm", "submit_error")
    with pytest.raises(SchedulerError, match="Unable to open file"):
        s.parse_submit(out)
    _, out = load("slurm", "submit_mem_too_big")      # --mem above RealMemory: refused at submit
    with pytest.raises(SchedulerError, match="Memory specification can not be satisfied"):
        s.parse_submit(out)
    for bad in ("/r/%j.out", "/r/a\\b", "/r/a\nb"):
        for streams in ({"stdout": bad, "stderr": "/r/err"}, {"stdout": "/r/out", "stderr": bad}):
            with pytest.raises(SchedulerError, match="Slurm would rewrite this output path") as caught:
                s.submit_argv("/r/run.sh", job_name="x", workdir="/r", **streams)
            assert caught.value.scheduler == "slurm" and repr(bad) in str(caught.value)


def test_slurm_status_is_one_command_for_all_ids():
    argv = Slurm().status_argv(["1", "22", "333"])
    assert argv[0] == "squeue" and "--jobs=1,22,333" in argv and "--states=all" in argv


def test_slurm_right_after_submit():
    jobs, st = status_of("slurm", "status_submitted")
    assert st[jobs["too_big"]].category == Category.QUEUED
    assert st[jobs["too_big"]].reason == st[jobs["too_big"]].blocked == "PartitionConfig"
    # PartitionConfig at first, PartitionNodeLimit once the scheduler looked again: blocked either way
    assert st[jobs["too_many_nodes"]].blocked in ("PartitionConfig", "PartitionNodeLimit")
    assert st[jobs["dependency"]].reason == "Dependency"             # not yet known to be never
    assert st[jobs["dependency"]].blocked is None
    assert st[jobs["held"]].reason == st[jobs["held"]].blocked == "JobHeldUser"
    assert st[jobs["begin_later"]].reason == "BeginTime" and st[jobs["begin_later"]].blocked is None
    assert st[jobs["completed"]].category == Category.RUNNING
    assert st[jobs["completed"]].reason is None        # "None" in squeue's output
    # the others were submitted in a burst: not started yet, "Priority" (or "None") for now
    for role in ("failed_exit3", "cancelled", "running", "signal9", "timeout", "requeue_held"):
        assert st[jobs[role]].category in ACTIVE and st[jobs[role]].blocked is None, role
        assert st[jobs[role]].reason in (None, "Priority"), role


def test_slurm_mixed_states_and_an_unknown_id():
    jobs, st = status_of("slurm", "status_mixed")
    expect = {"completed": ("COMPLETED", Category.SUCCEEDED), "failed_exit3": ("FAILED", Category.FAILED),
              "cancelled": ("CANCELLED", Category.CANCELLED), "signal9": ("FAILED", Category.FAILED),
              "running": ("RUNNING", Category.RUNNING), "too_big": ("PENDING", Category.QUEUED),
              "dependency": ("PENDING", Category.QUEUED), "held": ("PENDING", Category.QUEUED),
              "too_many_nodes": ("PENDING", Category.QUEUED), "requeue_held": ("PENDING", Category.QUEUED),
              "waits_dependency": ("PENDING", Category.QUEUED), "begin_later": ("PENDING", Category.QUEUED)}
    for role, (raw, category) in expect.items():
        assert (st[jobs[role]].raw_state, st[jobs[role]].category) == (raw, category), role
    assert st[jobs["dependency"]].reason == "DependencyNeverSatisfied"
    assert st[jobs["failed_exit3"]].reason == "NonZeroExitCode"
    assert st["999999"].category == Category.MISSING
    blocked = {role: st[jobs[role]].blocked for role in jobs}
    assert blocked == {
        "too_big": "PartitionConfig", "too_many_nodes": "PartitionNodeLimit",
        "dependency": "DependencyNeverSatisfied", "held": "JobHeldUser",
        # `scontrol requeuehold`: free text, known to be a hold by its priority 0
        "requeue_held": "job requeued in held state",
        "waits_dependency": None, "begin_later": None,      # Dependency, BeginTime: they start later
        "completed": None, "failed_exit3": None, "cancelled": None, "running": None, "signal9": None,
        "timeout": None}


def test_slurm_timeout():
    jobs, st = status_of("slurm", "status_final")
    assert (st[jobs["timeout"]].raw_state, st[jobs["timeout"]].category) == ("TIMEOUT", Category.FAILED)
    assert st[jobs["timeout"]].reason == "TimeLimit"
    assert st[jobs["timeout"]].limit == "time limit 0:01:00 (Slurm: TIMEOUT)"   # squeue's %l
    _, out = load("slurm", "accounting_timeout")
    assert Slurm().parse_accounting(out, jobs["timeout"]).limit == "time limit 0:01:00 (Slurm: TIMEOUT)"


def test_slurm_unknown_ids_are_missing_whether_squeue_fails_or_not():
    doc, out = load("slurm", "status_one_unknown")
    assert out.exit_code == 1 and "Invalid job id specified" in out.stderr   # one id: an error
    assert Slurm().parse_status(out, doc["job_ids"])["999999"].category == Category.MISSING
    doc, out = load("slurm", "status_all_unknown")
    assert out.exit_code == 0 and out.stdout == ""                           # several: silence
    assert {s.category for s in Slurm().parse_status(out, doc["job_ids"]).values()} == {Category.MISSING}


def test_slurm_unreachable_controller_is_an_error_not_missing():
    doc, out = load("slurm", "status_controller_down")
    with pytest.raises(SchedulerError, match="Unable to contact slurm controller"):
        Slurm().parse_status(out, doc["job_ids"])
    doc, out = load("slurm", "accounting_controller_down")
    with pytest.raises(SchedulerError, match="Unable to contact slurm controller"):
        Slurm().parse_accounting(out, doc["job_ids"][0])


def test_slurm_garbage_status_raises_with_raw_output():
    with pytest.raises(SchedulerError, match="what is this"):
        Slurm().parse_status(CommandOutput("what is this\n"), ["1"])


@pytest.mark.parametrize("role,category,raw,code,signal,reason", [
    ("completed", Category.SUCCEEDED, "COMPLETED", 0, None, None),
    ("failed_exit3", Category.FAILED, "FAILED", 3, None, "NonZeroExitCode"),
    ("cancelled", Category.CANCELLED, "CANCELLED", 0, 15, None),
    ("signal9", Category.FAILED, "FAILED", 0, 9, "JobLaunchFailure"),
    ("timeout", Category.FAILED, "TIMEOUT", 0, 15, "TimeLimit"),
    ("too_big", Category.QUEUED, "PENDING", None, None, "PartitionConfig"),
    ("held", Category.QUEUED, "PENDING", None, None, "JobHeldUser"),
    ("requeue_held", Category.QUEUED, "PENDING", None, None, "job_requeued_in_held_state"),
    ("begin_later", Category.QUEUED, "PENDING", None, None, "BeginTime"),
])
def test_slurm_accounting_from_scontrol(role, category, raw, code, signal, reason):
    doc, out = load("slurm", f"accounting_{role}")
    status = Slurm().parse_accounting(out, doc["jobs"][role])
    assert (status.category, status.raw_state, status.exit_code, status.signal, status.reason) == (
        category, raw, code, signal, reason)
    expect_blocked = {"too_big": "PartitionConfig", "held": "JobHeldUser",
                      "requeue_held": "job requeued in held state"}   # scontrol writes "_" for " "
    assert status.blocked == expect_blocked.get(role)


def slurm_pending(reason: str, priority: str = "4294901000", state: str = "PENDING"):
    return Slurm().parse_status(CommandOutput(f"42|{state}|{priority}|UNLIMITED|0|{reason}\n"), ["42"])["42"]


@pytest.mark.parametrize("code", sorted(slurm_module.BLOCKED_REASONS))
def test_slurm_every_blocked_reason_blocks(code):
    status = slurm_pending(code)
    assert (status.category, status.reason, status.blocked) == (Category.QUEUED, code, code)
    # the same code on a job that already ended is history, not a block
    assert slurm_pending(code, state="FAILED").blocked is None
    assert slurm_module.BLOCKED_REASONS[code]          # each entry says where it comes from


def test_a_job_whose_nodes_are_down_is_blocked_with_slurms_words():
    """Recorded on the rig: slurmd stopped, the node 'down* Not responding' after SlurmdTimeout,
    the job requeued PENDING with this free-text reason (squeue %r)."""
    text = "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions"
    out = CommandOutput(f"76|PENDING|4294901686|UNLIMITED|0|{text}\n")
    [status] = Slurm().parse_status(out, ["76"]).values()
    assert (status.category, status.blocked) == (Category.QUEUED, text)
    assert slurm_pending("NodeDown").blocked == "NodeDown"
    assert slurm_pending("Nodes busy").blocked is None


@pytest.mark.parametrize("code", sorted(slurm_module.WAITING_REASONS))
def test_slurm_waiting_reasons_do_not_block(code):
    status = slurm_pending(code)
    assert status.category == Category.QUEUED and status.blocked is None


def test_slurm_blocked_and_waiting_tables_are_disjoint_and_use_slurm_spelling():
    assert not set(slurm_module.BLOCKED_REASONS) & set(slurm_module.WAITING_REASONS)
    # the ones the brief and the rig named, spelled as job_state_reason_string() spells them
    assert {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "DependencyNeverSatisfied",
            "JobHeldUser", "JobHeldAdmin", "BadConstraints", "InvalidAccount", "InvalidQOS",
            "QOSMaxCpuPerJobLimit"} <= set(slurm_module.BLOCKED_REASONS)
    assert {"Priority", "Resources", "None", "BeginTime", "Dependency", "ReqNodeNotAvail",
            "AssocMaxJobsLimit"} <= set(slurm_module.WAITING_REASONS)


@pytest.mark.parametrize("state", sorted(slurm_module.BLOCKED_STATES))
def test_slurm_hold_states_block(state):
    assert Slurm.STATES[state] == Category.QUEUED
    assert slurm_pending("JobHeldAdmin", state=state).blocked == f"{state} (JobHeldAdmin)"
    assert slurm_pending("None", state=state).blocked == state


def test_slurm_reason_text_and_priority_zero():
    # ReqNodeNotAvail comes with the unavailable nodes and is not a block (nodes come back)
    assert slurm_pending("ReqNodeNotAvail, UnavailableNodes:node[1-2]").blocked is None
    # squeue's reason is the code's first word when text follows
    assert slurm_pending("PartitionTimeLimit (extra)").blocked == "PartitionTimeLimit (extra)"
    # priority 0 means held whatever the text: "launch failed requeued held", ...
    assert slurm_pending("launch failed requeued held", priority="0").blocked == "launch failed requeued held"
    assert slurm_pending("None", priority="0").blocked == "held (priority 0)"
    assert slurm_pending("Resources", priority="1").blocked is None
    assert slurm_pending("None", priority="0", state="RUNNING").blocked is None
    # a row without a priority (older recordings) is read, never taken for held
    assert slurm_pending("Priority", priority="").blocked is None


def test_slurm_accounting_unknown_id_without_accounting_storage_is_missing():
    doc, out = load("slurm", "accounting_unknown")
    assert "Invalid job id specified" in out.stderr and "accounting storage is disabled" in out.stderr
    assert Slurm().parse_accounting(out, "999999").category == Category.MISSING


def test_slurm_accounting_falls_back_to_sacct():
    s = Slurm()
    argv = s.accounting_argv("77")
    assert argv[:2] == ["sh", "-c"] and "scontrol" in argv[2] and "sacct" in argv[2] and argv[-1] == "77"
    err = "slurm_load_jobs error: Invalid job id specified\n"
    assert s.parse_accounting(CommandOutput("77|COMPLETED|0:0\n", err), "77").category == Category.SUCCEEDED
    st = s.parse_accounting(CommandOutput("77|CANCELLED by 1001|0:15\n", err), "77")
    assert (st.category, st.raw_state, st.signal) == (Category.CANCELLED, "CANCELLED by 1001", 15)
    # an id reused after the controller's state was wiped: the newest (last) row counts
    st = s.parse_accounting(CommandOutput("77|COMPLETED|0:0\n77|FAILED|2:0\n", err), "77")
    assert (st.category, st.exit_code) == (Category.FAILED, 2)
    assert s.parse_accounting(CommandOutput("", err), "77").category == Category.MISSING
    # never a success with a non-zero exit code
    assert s.parse_accounting(CommandOutput("77|COMPLETED|1:0\n", err), "77").category == Category.FAILED


def test_slurm_cancel():
    doc, out = load("slurm", "cancel")
    assert out.exit_code == 0      # scancel: running, finished and unknown ids alike
    assert Slurm().cancel_argv(["5", "6"]) == ["scancel", "5", "6"]


# ---------------------------------------------------------------------------- SGE
def test_sge_table_covers_sge_status_5():
    documented = ("qw Rq hqw hRwq r hr t Rr Rt s ts S tS T tT Rs Rts RS RtS RT RtT Eqw Ehqw EhRqw "
                  "dr dt dRr dRt ds dS dT dRs dRS dRT z").split()
    assert set(SGE.STATES) == set(documented)
    assert all(SGE.STATES[s] == Category.FAILED for s in ("Eqw", "Ehqw", "EhRqw"))
    assert all(SGE.STATES[s] == Category.CANCELLED for s in documented if s.startswith("d"))


def test_sge_submit_and_job_names():
    g = SGE()
    argv = g.submit_argv("/r/run.sh", job_name="1st-job", workdir="/r/src", stdout="/r/out", stderr="/r/err")
    assert argv == ["qsub", "-terse", "-N", "j1st-job", "-wd", "/r/src", "-o", "/r/out", "-e", "/r/err",
                    "-j", "n", "-S", "/bin/bash", "/r/run.sh"]
    assert g.submit_argv("/s", job_name="abc", workdir="/w", stdout="/o", stderr="/e")[3] == "abc"
    assert g.submit_argv("/s", job_name="_x", workdir="/w", stdout="/o", stderr="/e")[3] == "j_x"
    assert g.submit_argv("/s", job_name="-x", workdir="/w", stdout="/o", stderr="/e")[3] == "j-x"
    _, out = load("sge", "submit")         # recorded with the adapter's own argv for "1st-job"
    assert "j1st-job" in load("sge", "submit")[0]["command"]
    assert g.parse_submit(out) == out.stdout.strip()
    _, out = load("sge", "submit_digit_name")    # why: qsub refuses the unprefixed name
    with pytest.raises(SchedulerError, match="cannot start with a digit"):
        g.parse_submit(out)
    # names that do not exist are refused at submit; impossible amounts are not (see below)
    with pytest.raises(SchedulerError, match='unknown queue "nosuchqueue"'):
        g.parse_submit(load("sge", "submit_unknown_queue")[1])
    with pytest.raises(SchedulerError, match='parallel environment "nonexistent" does not exist'):
        g.parse_submit(load("sge", "submit_unknown_pe")[1])
    for bad in ("/r/a:b", "/r/$JOB_ID.out", "/r/a,b", "/r/a\nb"):
        for streams in ({"stdout": bad, "stderr": "/e"}, {"stdout": "/o", "stderr": bad}):
            with pytest.raises(SchedulerError, match="Grid Engine would misread this output path") as caught:
                g.submit_argv("/s", job_name="x", workdir="/w", **streams)
            assert caught.value.scheduler == "sge" and repr(bad) in str(caught.value)


def test_sge_right_after_submit():
    jobs, st = status_of("sge", "status_submitted")
    assert st[jobs["held"]].raw_state == "hqw" and st[jobs["held"]].category == Category.QUEUED
    assert st[jobs["held"]].blocked == "user hold (hqw)"          # from `qstat -s hu`
    assert st[jobs["waits_dependency"]].raw_state == "hqw"        # -hold_jid: hqw too, but not held
    assert st[jobs["waits_dependency"]].blocked is None
    assert st[jobs["unsatisfiable"]].raw_state == "qw"
    assert st[jobs["unsatisfiable"]].blocked is None
    assert {st[jobs[r]].category for r in ("running", "suspended", "rescheduled")} == {Category.RUNNING}


def test_sge_deleting_suspended_requeued_and_error_states():
    jobs, st = status_of("sge", "status_deleting")
    assert (st[jobs["deleted_running"]].raw_state, st[jobs["deleted_running"]].category) == (
        "dr", Category.CANCELLED)
    assert (st[jobs["suspended"]].raw_state, st[jobs["suspended"]].category) == ("s", Category.RUNNING)
    assert (st[jobs["rescheduled"]].raw_state, st[jobs["rescheduled"]].category) == ("Rq", Category.QUEUED)
    error = st[jobs["error_state"]]
    assert (error.raw_state, error.category) == ("Eqw", Category.FAILED)
    assert error.reason.startswith("error: can't chdir to ") and "no-such-folder" in error.reason


def test_sge_mixed_states_and_jobs_gone_from_qstat():
    jobs, st = status_of("sge", "status_mixed")
    expect = {"running": "r", "suspended": "s", "rescheduled": "Rr", "error_state": "Eqw", "held": "hqw",
              "unsatisfiable": "qw", "completed": "", "failed_exit3": "", "deleted_running": ""}
    assert {role: st[jobs[role]].raw_state for role in expect} == expect
    for role in ("completed", "failed_exit3", "deleted_running"):
        assert st[jobs[role]].category == Category.MISSING     # finished: qacct tells the rest
    assert st["999999"].category == Category.MISSING
    assert "can't chdir" in st[jobs["error_state"]].reason
    assert st[jobs["running"]].reason is None
    blocked = {role: st[jobs[role]].blocked for role in jobs}
    assert blocked == {
        "held": "user hold (hqw)",
        "wrong_queue_attr": '(-l qname=nosuch) cannot run in queue "all.q@localhost" because it offers only '
                            'qf:qname=all.q',
        "wrong_arch": '(-l arch=sparc) cannot run at host "localhost" because it offers only hl:arch=lx-amd64',
        # a load value no host offers now may be offered later: waiting, with the reason said
        "unsatisfiable": None, "waits_dependency": None, "begin_later": None,
        "running": None, "suspended": None, "rescheduled": None, "error_state": None,   # Eqw: FAILED
        "completed": None, "failed_exit3": None, "deleted_running": None}
    assert st[jobs["unsatisfiable"]].reason.startswith("(-l mem_free=1000T) cannot run at host")
    assert st[jobs["waits_dependency"]].reason == "job dropped because of job dependencies"
    assert st[jobs["begin_later"]].reason == "execution time not reached"
    assert st[jobs["held"]].reason == "Job is in hold state"


def sge_output(state: str, info: tuple[str, ...] = (), holds: dict[str, list[str]] | None = None) -> CommandOutput:
    """The status script's output for job 42: its qstat -xml entry, `qstat -j` lines, hold lists."""
    xml = one_job_output("sge", state)[0].stdout
    lines = ["@@stepcluster-qstat-j", "job_number:                 42"]
    lines += [("scheduling info:            " if i == 0 else " " * 28) + text for i, text in enumerate(info)]
    for flag in sge_module.BLOCKING_HOLDS:
        lines += [f"@@stepcluster-qstat-s {flag}", *(holds or {}).get(flag, [])]
    return CommandOutput(xml + "\n".join(lines) + "\n")


def sge_status(state: str, info: tuple[str, ...] = (), holds: dict[str, list[str]] | None = None):
    return SGE().parse_status(sge_output(state, info, holds), ["42"])["42"]


# one real or msg_schedd.h-formatted message per entry of the table
SGE_BLOCKED_EXAMPLES = {
    r'^\(-l [^)]*\) cannot run (?:at host "[^"]*"|in queue "[^"]*"|globally) because it offers only [gqh]f:':
        '(-l h_rt=360000) cannot run in queue "all.q@node1" because it offers only qf:h_rt=24:00:00',
    r'^\(-l [^)]*\) cannot run (?:at host "[^"]*"|in queue "[^"]*"|globally) because it offers only [gqh][lL]:'
    r'(?:arch|num_proc|mem_total|swap_total|virtual_total|m_topology|m_socket|m_core|m_thread)=':
        '(-l num_proc=64) cannot run at host "node1" because it offers only hl:num_proc=32.000000',
    r'^\(-l [^)]*\) cannot run .* because job requests (?:unknown|non requestable) resource':
        '(-l mem_free=1000T) cannot run in queue "all.q@localhost" because job requests unknown resource (mem_free)',
    r'^cannot run in queue "[^"]*" because it is not contained in its hard queue list \(-q\)$':
        'cannot run in queue "long.q" because it is not contained in its hard queue list (-q)',
    r'^has no permission for .+ "[^"]*"$': 'has no permission for cluster queue "gpu.q"',
    r'^\((?:project [^)]*|no project)\) does not have the correct project to run in ':
        '(no project) does not have the correct project to run in cluster queue "proj.q"',
    r'^\(project [^)]*\) is not allowed to run in .* based on the excluded project list$':
        '(project alpha) is not allowed to run in cluster queue "all.q" based on the excluded project list',
    r'^cannot run in queue instance "[^"]*" because queues are non requestable$':
        'cannot run in queue instance "all.q@node1" because queues are non requestable',
    r'^cannot run in queue instance "[^"]*" because (?:it is not of (?:parallel type|type checkpointing|type batch)'
    r'|the job is not parallel|ckpt object "[^"]*" is not in ckpt list of queue)$':
        'cannot run in queue instance "all.q@node1" because it is not of parallel type',
    r'^cannot run in queue "[^"]*" because PE "[^"]*" is not in pe list$':
        'cannot run in queue "all.q" because PE "mpi" is not in pe list',
    r'^cannot run in queue instance "[^"]*" because it has "0" slots$':
        'cannot run in queue instance "all.q@node1" because it has "0" slots',
    r"^does not request (?:globally )?'forced' resource ":
        "does not request 'forced' resource \"gpu\" of queue instance all.q@node1",
    r'^cannot run because requested ckpt object not found$': 'cannot run because requested ckpt object not found',
    r'^cannot run because no access to pe "[^"]*"$': 'cannot run because no access to pe "mpi"',
    r'^cannot run because total slots of pe "[^"]*" not in range of job$':
        'cannot run because total slots of pe "mpi" not in range of job',
    r'^pe "[^"]*" dropped because allocation rule is not suitable$':
        'pe "mpi" dropped because allocation rule is not suitable',
    r'^no matching pe found$': 'no matching pe found',
}
# msg_schedd.h messages about things that change: never a block, even alone
SGE_WAITING_EXAMPLES = [
    'queue instance "all.q@node1" dropped because it is full',
    'queue instance "all.q@node1" dropped because it is suspended',
    'queue instance "all.q@node1" dropped because it is disabled',
    'queue instance "all.q@node1" dropped because it is temporarily not available',
    'queue instance "all.q@node1" dropped because it is overloaded: np_load_avg=1.750000 (no load adjustment) >= 1.75',
    "All queues dropped because of overload or full",
    '(-l h_vmem=64G) cannot run in queue "all.q@node1" because it offers only qc:h_vmem=8.000G',
    '(-l gpu=2) cannot run at host "node1" because it offers only hc:gpu=1.000000',
    '(-l lic=1) cannot run globally because it offers only gc:lic=0.000000',
    '(-l mem_free=1000T) cannot run at host "localhost" because it offers only hl:mem_free=22.641G',   # rig
    'cannot run in PE "mpi" because it only offers 0 slots',
    "parallel job requires more slots than available",
    "cannot run because resources requested are not available for parallel job",
    "execution time not reached",                                                                     # rig
    "job dropped because of job dependencies",                                                        # rig
    "job dropped because of user limitations",
    "Job is in hold state",                          # a hold counts only from the qstat -s lists
    'cannot run because it exceeds limit "hpc/////" in rule "max_slots/1"',
    'cannot run on host "node1" until clean up of an previous run has finished',
    "not all array task may be started due to 'max_aj_instances'",
]


def test_sge_blocked_examples_walk_the_whole_table():
    assert set(SGE_BLOCKED_EXAMPLES) == set(sge_module.BLOCKED_SCHEDULING_INFO)


@pytest.mark.parametrize("pattern", list(SGE_BLOCKED_EXAMPLES), ids=lambda p: SGE_BLOCKED_EXAMPLES[p][:40])
def test_sge_every_blocking_scheduling_info_blocks(pattern):
    line = SGE_BLOCKED_EXAMPLES[pattern]
    status = sge_status("qw", (line,))
    assert (status.category, status.reason, status.blocked) == (Category.QUEUED, line, line)
    # one line per queue instance / host: blocked when every one of them is
    two = (line, line.replace("node1", "node2"))
    assert sge_status("qw", two).blocked == "; ".join(two)
    # a single instance that is merely full means the job may still run there
    assert sge_status("qw", (line, 'queue instance "all.q@node2" dropped because it is full')).blocked is None
    assert sge_module.BLOCKED_SCHEDULING_INFO[pattern]


@pytest.mark.parametrize("line", SGE_WAITING_EXAMPLES)
def test_sge_waiting_scheduling_info_does_not_block(line):
    status = sge_status("qw", (line,))
    assert (status.category, status.reason, status.blocked) == (Category.QUEUED, line, None)


@pytest.mark.parametrize("flag,kind", list(sge_module.BLOCKING_HOLDS.items()))
def test_sge_every_blocking_hold_blocks(flag, kind):
    assert sge_status("hqw", holds={flag: ["42"]}).blocked == f"{kind} hold (hqw)"
    assert sge_status("hRwq", holds={flag: ["7", "42"]}).blocked == f"{kind} hold (hRwq)"
    # listed under a hold a moment ago but released since: the state says qw
    assert sge_status("qw", holds={flag: ["42"]}).blocked is None
    # another job's hold
    assert sge_status("hqw", holds={flag: ["420"]}).blocked is None


def test_sge_holds_that_end_by_themselves_and_info_that_says_nothing():
    # hqw only because of -hold_jid (qstat -s hj): not in the blocking lists
    assert sge_status("hqw", ("job dropped because of job dependencies",)).blocked is None
    assert sge_status("hqw", holds={"hu": ["42"], "hs": ["42"]}).blocked == "user/system hold (hqw)"
    status = sge_status("qw", ("(Collecting of scheduler job information is turned off)",))
    assert (status.reason, status.blocked) == (None, None)
    # Eqw keeps its error reason and stays FAILED, never "blocked"
    status = sge_status("Eqw", ("Job is in error state",), holds={"hu": ["42"]})
    assert (status.category, status.blocked) == (Category.FAILED, None)


def test_sge_nothing_known_and_qmaster_down():
    doc, out = load("sge", "status_all_unknown")
    assert {s.category for s in SGE().parse_status(out, doc["job_ids"]).values()} == {Category.MISSING}
    doc, out = load("sge", "status_qmaster_down")
    with pytest.raises(SchedulerError, match="unable to send message to qmaster"):
        SGE().parse_status(out, doc["job_ids"])


def test_sge_broken_xml_raises_with_raw_output():
    with pytest.raises(SchedulerError, match="<job_info><job_list"):
        SGE().parse_status(CommandOutput("<job_info><job_list>"), ["1"])
    with pytest.raises(SchedulerError, match="without number or state"):
        SGE().parse_status(CommandOutput("<job_info><job_list><state>r</state></job_list></job_info>"), ["1"])


@pytest.mark.parametrize("role,category,code,signal,reason", [
    ("completed", Category.SUCCEEDED, 0, None, None),
    ("failed_exit3", Category.FAILED, 3, None, None),
    ("deleted_running", Category.FAILED, 137, 9, "failed 100: assumedly after job"),
    ("error_state", Category.FAILED, 0, None, "failed 28: changing into working directory"),
])
def test_sge_accounting(role, category, code, signal, reason):
    doc, out = load("sge", f"accounting_{role}")
    status = SGE().parse_accounting(out, doc["jobs"][role])
    assert (status.category, status.exit_code, status.signal, status.reason) == (category, code, signal, reason)


def test_sge_not_yet_in_qacct_is_missing():
    for name in ("accounting_unknown", "accounting_no_file"):
        doc, out = load("sge", name)
        assert out.exit_code == 1
        assert SGE().parse_accounting(out, doc["job_ids"][0]).category == Category.MISSING
    doc, out = load("sge", "accounting_qmaster_down")    # qacct reads a file: no qmaster needed
    assert SGE().parse_accounting(out, doc["job_ids"][0]).category == Category.SUCCEEDED
    with pytest.raises(SchedulerError, match="permission denied"):
        SGE().parse_accounting(CommandOutput("", "qacct: permission denied\n", 1), "5")


def test_sge_accounting_takes_the_newest_record_of_a_reused_id():
    doc, ok = load("sge", "accounting_completed")
    _, bad = load("sge", "accounting_failed_exit3")
    job_id = doc["jobs"]["completed"]
    bad_text = bad.stdout.replace(f"jobnumber    {load('sge', 'accounting_failed_exit3')[0]['jobs']['failed_exit3']} ",
                                  f"jobnumber    {job_id} ")
    status = SGE().parse_accounting(CommandOutput(ok.stdout + bad_text), job_id)
    assert (status.category, status.exit_code) == (Category.FAILED, 3)


def test_sge_cancel_recorded():
    doc, out = load("sge", "cancel")
    assert out.exit_code == 0 and 'does not exist' in out.stdout and "registered the job" in out.stdout
    doc, out = load("sge", "cancel_qmaster_down")
    assert out.exit_code != 0


# ---------------------------------------------------------------------------- Torque
def test_torque_table_is_the_documented_letters():
    assert set(Torque.STATES) == set("QHWRETCS")
    assert Torque.STATES["C"] == Category.FAILED       # success needs exit_status 0


def test_torque_submit():
    t = Torque()
    assert t.submit_argv("/r/run.sh", job_name="9lives", workdir="/r/src", stdout="/r/out",
                         stderr="/r/err") == ["qsub", "-N", "j9lives", "-d", "/r/src", "-o", "/r/out",
                                              "-e", "/r/err", "-j", "n", "-S", "/bin/bash", "/r/run.sh"]
    doc, out = load("torque", "submit")
    assert t.parse_submit(out) == doc["jobs"]["submitted"]
    _, out = load("torque", "submit_error")
    with pytest.raises(SchedulerError, match="Unknown queue"):
        t.parse_submit(out)
    for bad in ("host:/o", "/o\n"):
        for streams in ({"stdout": bad, "stderr": "/e"}, {"stdout": "/o", "stderr": bad}):
            with pytest.raises(SchedulerError, match="Torque would misread this output path") as caught:
                t.submit_argv("/s", job_name="x", workdir="/w", **streams)
            assert caught.value.scheduler == "torque" and repr(bad) in str(caught.value)


@pytest.mark.parametrize("role,category,code,signal,reason", [
    ("queued", Category.QUEUED, None, None, None),
    ("held", Category.QUEUED, None, None, None),
    ("waiting", Category.QUEUED, None, None, None),
    ("transit", Category.QUEUED, None, None, None),
    ("running", Category.RUNNING, None, None, None),
    ("exiting", Category.RUNNING, None, None, None),
    ("suspended", Category.RUNNING, None, None, None),
    ("completed", Category.SUCCEEDED, 0, None, None),
    ("failed_exit3", Category.FAILED, 3, None, None),
    ("killed_271", Category.FAILED, 271, 15, None),
    ("exec_failed", Category.FAILED, -1, None, "exit_status -1: " + JOB_EXEC_CODES[-1]),
    ("walltime", Category.FAILED, -11, None, "exit_status -11: job exceeded a walltime limit"),
    ("no_exit_status", Category.FAILED, None, None, "Job deleted by hpc@head.example.com"),
    ("unknown", Category.MISSING, None, None, None),
])
def test_torque_every_job_state_and_exit_status(role, category, code, signal, reason):
    jobs, st = status_of("torque", "status_all_states")
    status = st[jobs[role]]
    assert (status.category, status.exit_code, status.signal, status.reason) == (category, code, signal, reason)
    # W (waiting for its qsub -a time) starts by itself; the held job has Hold_Types = u
    assert status.blocked == ("job_state H (Hold_Types u)" if role == "held" else None)


def test_torque_holds_recorded_from_the_documentation():
    jobs, st = status_of("torque", "status_holds")
    assert {role: st[jobs[role]].blocked for role in jobs} == {
        "held_user": "job_state H (Hold_Types u)",
        "held_operator": "job_state H (Hold_Types o)",
        "held_system": "job_state H (Hold_Types s)",
        "waits_dependency": None,      # the server's own hold until the predecessor ends
        "held_user_and_dependency": "job_state H (Hold_Types us)",
        "released": None}
    assert {st[jobs[role]].category for role in jobs} == {Category.QUEUED}


def torque_job(state: str, **attrs: str) -> str:
    return "Job Id: 42.head\n    Job_Name = x\n    job_state = " + state + "\n" + "".join(
        f"    {key} = {value}\n" for key, value in attrs.items())


@pytest.mark.parametrize("letter", sorted(BLOCKING_HOLD_TYPES))
def test_torque_every_blocking_hold_type_blocks(letter):
    t = Torque()
    status = t.parse_status(CommandOutput(torque_job("H", Hold_Types=letter)), ["42.head"])["42.head"]
    assert (status.category, status.blocked) == (Category.QUEUED, f"job_state H (Hold_Types {letter})")
    with_depend = t.parse_status(CommandOutput(torque_job("H", Hold_Types=letter, depend="afterok:41.head@head")),
                                 ["42.head"])["42.head"]
    # only a lone system hold is explained by depend=
    assert with_depend.blocked == (None if letter == "s" else f"job_state H (Hold_Types {letter})")


@pytest.mark.parametrize("state,attrs", [
    ("H", {"Hold_Types": "n"}), ("H", {}), ("W", {"Hold_Types": "n", "Execution_Time": "Tue Dec  1 00:00:00 2026"}),
    ("Q", {"Hold_Types": "n"}), ("T", {}), ("R", {"Hold_Types": "u"}),
])
def test_torque_states_that_start_by_themselves(state, attrs):
    status = Torque().parse_status(CommandOutput(torque_job(state, **attrs)), ["42.head"])["42.head"]
    assert status.blocked is None


def test_torque_unknown_ids_short_ids_and_server_down():
    t = Torque()
    for name in ("status_unknown_only", "status_unknown_torque2"):
        doc, out = load("torque", name)
        assert {s.category for s in t.parse_status(out, doc["job_ids"]).values()} == {Category.MISSING}
    jobs, st = status_of("torque", "status_short_id")
    assert st[jobs["running"]].category == Category.RUNNING
    doc, out = load("torque", "status_server_down")
    with pytest.raises(SchedulerError, match="cannot connect to server"):
        t.parse_status(out, doc["job_ids"])
    with pytest.raises(SchedulerError, match="not qstat output"):
        t.parse_status(CommandOutput("not qstat output\n"), ["1.head"])


def test_torque_long_values_are_joined():
    doc, out = load("torque", "status_all_states")
    attrs = dict(parse_full(out.stdout))[doc["jobs"]["exec_failed"]]
    assert attrs["Variable_List"].endswith("PBS_O_SERVER=head.example.com")
    assert "0Bad UID for job execution" in attrs["sched_hint"]


def test_torque_has_no_history_and_one_command_for_all():
    t = Torque()
    assert t.accounting_argv("1.head") is None
    assert t.parse_accounting(CommandOutput(""), "1.head").category == Category.MISSING
    assert t.status_argv(["1.head", "2.head"]) == ["qstat", "-f", "1.head", "2.head"]


# ---------------------------------------------------------------------------- shell snippets
@pytest.fixture
def fake_bin(tmp_path):
    """Write fake scheduler commands into a folder put first on PATH."""
    def make(name: str, body: str) -> None:
        path = tmp_path / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    make.env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    return make


def run(argv, env) -> CommandOutput:
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=10)
    return CommandOutput(p.stdout, p.stderr, p.returncode)


FAKE_SGE_QSTAT = """d=$(dirname "$0")
if [ "$1" = -xml ]; then cat "$d/table.xml"; exit 0; fi
if [ "$1" = -j ]; then
  echo "$2" > "$d/asked"
  echo "job_number:                 ERROR"; echo "sge_o_home:                 /x"
  echo "error reason          1:      01/01/2030 00:00:00 [1:2]: boom"
  echo "job_number:                 HELD"
  echo "scheduling info:            Job is in hold state"
  echo "                            queue instance \\"all.q@h\\" dropped because it is full"
  echo "sge_o_shell:                /bin/bash"
  exit 0
fi
echo "$*" >> "$d/holds"
if [ "$4" = hu ]; then printf "job-ID  prior   name\\n-----------\\n    HELD 0.00000 held\\n"; fi
exit 0
"""


def test_sge_status_script_asks_qstat_j_and_holds_only_when_needed(fake_bin):
    doc, recorded = load("sge", "status_mixed")
    xml = recorded.stdout.partition("@@stepcluster-qstat-j")[0].strip()
    folder = Path(fake_bin.env["PATH"].split(":")[0])
    (folder / "table.xml").write_text(xml + "\n")
    held, error = doc["jobs"]["held"], doc["jobs"]["error_state"]
    fake_bin("qstat", FAKE_SGE_QSTAT.replace("ERROR", error).replace("HELD", held))
    out = run(SGE().status_argv(doc["job_ids"]), fake_bin.env)
    assert out.exit_code == 0 and "@@stepcluster-qstat-j" in out.stdout
    assert (folder / "asked").read_text().strip() == ",".join(doc["job_ids"])
    assert "sge_o_home" not in out.stdout and "sge_o_shell" not in out.stdout   # only what the parser needs
    assert (folder / "holds").read_text().splitlines() == [f"-u * -s {f}" for f in sge_module.BLOCKING_HOLDS]
    st = SGE().parse_status(out, doc["job_ids"])
    assert st[error].reason == "boom" and st[error].blocked is None
    assert st[held].reason == 'Job is in hold state; queue instance "all.q@h" dropped because it is full'
    assert st[held].blocked == "user hold (hqw)"
    # nothing held: no hold lists; then nothing pending either: no qstat -j
    (folder / "holds").unlink()
    (folder / "table.xml").write_text(xml.replace("hqw", "qw") + "\n")
    out = run(SGE().status_argv(doc["job_ids"]), fake_bin.env)
    assert "@@stepcluster-qstat-j" in out.stdout and "@@stepcluster-qstat-s" not in out.stdout
    assert not (folder / "holds").exists()
    (folder / "asked").unlink()
    (folder / "table.xml").write_text(re.sub(r"<state>[^<]*</state>", "<state>r</state>", xml) + "\n")
    out = run(SGE().status_argv(doc["job_ids"]), fake_bin.env)
    assert "@@stepcluster-qstat" not in out.stdout and not (folder / "asked").exists()
    assert {s.blocked for s in SGE().parse_status(out, doc["job_ids"]).values()} == {None}
    fake_bin("qstat", 'echo "error: unable to contact qmaster" >&2; exit 1\n')
    out = run(SGE().status_argv(["1"]), fake_bin.env)
    assert out.exit_code == 1
    with pytest.raises(SchedulerError, match="unable to contact qmaster"):
        SGE().parse_status(out, ["1"])


@pytest.mark.parametrize("adapter,gone_message", [
    (SGE(), 'denied: job "5" does not exist'),
    (Torque(), "qdel: Unknown Job Id Error 5.head"),
    (Torque(), "qdel: Request invalid for state of job MSG=invalid state for job - COMPLETE 5.head"),
])
def test_cancelling_jobs_already_gone_is_not_an_error(fake_bin, adapter, gone_message):
    job_id = "5" if isinstance(adapter, SGE) else "5.head"
    fake_bin("qdel", f"echo '{gone_message}'; exit 1\n")
    out = run(adapter.cancel_argv([job_id]), fake_bin.env)
    assert out.exit_code == 0 and gone_message in out.stdout
    fake_bin("qdel", "echo 'cannot connect to server'; exit 2\n")
    assert run(adapter.cancel_argv([job_id]), fake_bin.env).exit_code == 2
    fake_bin("qdel", "exit 3\n")
    assert run(adapter.cancel_argv([job_id]), fake_bin.env).exit_code == 3
    fake_bin("qdel", 'printf "%s\\n" "$@" > "$(dirname "$0")/args"\n')
    assert run(adapter.cancel_argv([job_id, job_id]), fake_bin.env).exit_code == 0
    assert (Path(fake_bin.env["PATH"].split(":")[0]) / "args").read_text().split() == [job_id, job_id]


def test_slurm_accounting_script_tries_scontrol_then_sacct(fake_bin):
    fake_bin("scontrol", 'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1\n')
    fake_bin("sacct", 'echo "77|FAILED|4:0"\n')
    out = run(Slurm().accounting_argv("77"), fake_bin.env)
    status = Slurm().parse_accounting(out, "77")
    assert (status.category, status.exit_code) == (Category.FAILED, 4)
    fake_bin("scontrol", 'echo "JobId=77 JobName=x JobState=COMPLETED Reason=None ExitCode=0:0"\n')
    fake_bin("sacct", "echo never; exit 9\n")
    assert Slurm().parse_accounting(run(Slurm().accounting_argv("77"), fake_bin.env), "77").category == (
        Category.SUCCEEDED)


def test_categories_used_by_the_tables_are_all_known():
    for adapter in ADAPTERS.values():
        assert set(adapter.STATES.values()) <= ACTIVE | TERMINAL | {Category.MISSING}


# ------------------------------------------------- finding a submitted job by its name (retries)
@pytest.mark.parametrize("scheduler, fixture, expected", [
    ("slurm", "recover_known", ["136"]),
    ("slurm", "recover_unknown", []),          # accounting disabled: squeue's answer is enough
    ("sge", "recover_known", ["61"]),
    ("sge", "recover_unknown", []),
    ("sge", "recover_ended", None),            # from qacct: its jobnumber
])
def test_a_job_is_found_by_its_name_in_recorded_output(scheduler, fixture, expected):
    doc, out = load(scheduler, fixture)
    assert doc["command"] == " ".join(__import__("shlex").quote(a) for a in
                                      ADAPTERS[scheduler].recover_argv(doc["job_name"]))
    ids = ADAPTERS[scheduler].parse_recover(out, doc["job_name"])
    if expected is None:       # the id qsub printed, as the fixture says
        expected = [re.search(r"printed (\d+)", doc["what"]).group(1)]
    assert ids == expected
    if scheduler == "sge":     # names filtered here (squeue filters by --name itself)
        assert ADAPTERS[scheduler].parse_recover(out, doc["job_name"] + "x") == []   # exact names only


def test_torque_finds_a_job_by_its_name_in_qstat_f():
    _, out = load("torque", "recover_by_name")
    torque = Torque()
    assert torque.recover_argv("a-0123456789ab") == ["qstat", "-f"]
    assert torque.parse_recover(out, "a-0123456789ab") == ["301.head.example.com"]
    assert torque.parse_recover(out, "1st-0123456789ab") == ["303.head.example.com"]   # letter_first
    assert torque.parse_recover(out, "a-0123456789") == []
    assert torque.parse_recover(CommandOutput("", "", 0), "a") == []          # no jobs at all


@pytest.mark.parametrize("scheduler, out", [
    ("slurm", CommandOutput("", "slurm_load_jobs error: Unable to contact slurm controller", 1)),
    ("slurm", CommandOutput("136\n", "", 0)),                           # never reached the mark
    ("slurm", CommandOutput("garbage\n@@stepcluster-sacct\n", "", 0)),
    ("sge", CommandOutput("", "error: commlib error: got select error (Connection refused)", 1)),
    ("sge", CommandOutput("<job_info>\n@@stepcluster-qacct\n", "", 0)),
    ("torque", CommandOutput("", "qstat: cannot connect to server head (errno=111)", 1)),
    ("torque", CommandOutput("not qstat -f\n", "", 0)),
])
def test_a_scheduler_that_cannot_tell_is_an_error_never_an_empty_answer(scheduler, out):
    with pytest.raises(SchedulerError):
        ADAPTERS[scheduler].parse_recover(out, "a-0123456789ab")


# ------------------------------------------------- the recorded commands are the adapters' own
def _fixture_argv(scheduler: str, name: str, doc: dict):
    """The argv the adapter builds for what a fixture recorded, or None for hand-made commands."""
    adapter = ADAPTERS[scheduler]
    tokens = shlex.split(doc["command"])
    if name == "probe":
        return adapter.probe_argv()
    if name.startswith("status_"):
        return adapter.status_argv(doc["job_ids"])
    if name.startswith("accounting_") and "-f" not in tokens:
        return adapter.accounting_argv(doc["job_ids"][0])
    if name.startswith("cancel"):
        return adapter.cancel_argv([t for t in tokens[-4:] if t.isdigit()])
    if name.startswith("recover_") and "job_name" in doc:
        return adapter.recover_argv(doc["job_name"])
    if name == "submit" and scheduler in ("slurm", "sge"):
        opt = dict(zip(tokens, tokens[1:]))
        return adapter.submit_argv(tokens[-1], job_name=opt.get("-J", "1st-job"),
                                   workdir=opt.get("-D") or opt["-wd"], stdout=opt["-o"], stderr=opt["-e"])
    return None


RECORDED = sorted((p.parent.name, p.stem) for p in FIXTURES.glob("*/*.json"))


@pytest.mark.parametrize("scheduler,name", RECORDED, ids=[f"{s}-{n}" for s, n in RECORDED])
def test_every_recorded_command_is_what_the_adapter_sends(scheduler, name):
    doc = json.loads((FIXTURES / scheduler / f"{name}.json").read_text())
    argv = _fixture_argv(scheduler, name, doc)
    if argv is None:
        pytest.skip("a hand-made command (refusals at submit, Torque from its documentation)")
    # some recordings put the cluster out of reach first ("env SLURM_CONF=... ", "qdel 151 && ")
    assert doc["command"].endswith(shlex.join(argv)), (doc["command"], shlex.join(argv))


def test_probe_commands_are_cheap_and_exact():
    assert Slurm().probe_argv() == ["sinfo", "--noheader", "--summarize"]
    assert SGE().probe_argv() == ["qconf", "-sql"]
    assert Torque().probe_argv() == ["qstat", "-B"]


def test_status_and_accounting_argv_are_exact():
    assert Slurm().status_argv(["1", "22_3"]) == [
        "squeue", "--noheader", "--states=all", "--jobs=1,22_3", "--format=%i|%T|%Q|%l|%m|%r"]
    assert SGE().accounting_argv("148") == ["qacct", "-j", "148"]
    argv = SGE().status_argv(["1", "2"])
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["sh", "1,2"]
    argv = Slurm().accounting_argv("77")
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["sh", "77"]
    assert Slurm().recover_argv("a-1")[3:] == ["sh", "a-1"]
    assert SGE().recover_argv("1a")[3:] == ["sh", "j1a"]
    for build in (Slurm().accounting_argv, SGE().accounting_argv):
        with pytest.raises(SchedulerError):
            build("1;id")


def test_shell_helpers_name_themselves_sh_in_their_complaints(fake_bin):
    # a PATH with a shell and its tools but no scheduler: the complaint comes from sh, as $0 says
    import shutil
    folder = Path(fake_bin.env["PATH"].split(":")[0])
    for tool in ("sh", "grep", "awk", "cat"):
        (folder / tool).symlink_to(shutil.which(tool))
    env = {**fake_bin.env, "PATH": str(folder)}
    for argv in (SGE().cancel_argv(["5"]), Torque().cancel_argv(["5.head"]), SGE().status_argv(["5"]),
                 Slurm().accounting_argv("5")):
        out = run(argv, env)
        assert out.exit_code == 127
        assert (out.stdout + out.stderr).strip().startswith("sh:"), out


# ------------------------------------------------- every error says which scheduler, and what it printed
def expect_error(call, scheduler: str, out: CommandOutput, job_ids=None, match: str | None = None):
    with pytest.raises(SchedulerError, match=match) as caught:
        call()
    exc = caught.value
    assert exc.scheduler == scheduler and exc.output is out
    text = str(exc)
    assert f"(exit {out.exit_code})" in text and f"stdout:\n{out.stdout}" in text and f"stderr:\n{out.stderr}" in text
    if job_ids is not None:
        assert exc.job_ids == tuple(job_ids)
    return exc


SLURM_ERRORS = [
    ("parse_submit", CommandOutput("", "sbatch: error: refused", 1), None, "sbatch did not print one job id"),
    ("parse_submit", CommandOutput("1\n2\n", "", 0), None, "sbatch did not print one job id"),
    ("parse_submit", CommandOutput("12\n", "", 1), None, "sbatch did not print one job id"),
    ("parse_status", CommandOutput("", "squeue: error: Unable to contact slurm controller", 1), ["1"], "squeue failed"),
    ("parse_status", CommandOutput("1|RUNNING|1|UNLIMITED|0|None\n", "slurm_load_jobs error: Invalid job id specified", 1),
     ["1"], "squeue failed"),
    ("parse_status", CommandOutput("1|RUNNING|1|UNLIMITED|0|None\nnot a row\n"), ["1"], "unexpected squeue line 'not a row'"),
    ("parse_status", CommandOutput("1|RUNNING|x|UNLIMITED|0|None\n"), ["1"], "unexpected squeue line"),
    ("parse_accounting", CommandOutput("JobId=7 JobName=x JobState=RUNNING Reason=None\n"), ["7"],
     "scontrol record without JobState/ExitCode"),
    ("parse_accounting", CommandOutput("JobId=7 JobName=x Reason=None ExitCode=0:0\n"), ["7"],
     "scontrol record without JobState/ExitCode"),
    ("parse_accounting", CommandOutput("what is this\n"), ["7"], "unexpected accounting output for job 7"),
    ("parse_accounting", CommandOutput("", "sacct: error: Problem talking to the database", 1), ["7"],
     "cannot read Slurm's history of job 7"),
    ("parse_recover", CommandOutput("", "squeue: error: down", 1), None, "squeue cannot say whether job 'a-1' exists"),
    ("parse_recover", CommandOutput("5\n", "", 0), None, "squeue cannot say whether job 'a-1' exists"),
    ("parse_recover", CommandOutput("5\n@@stepcluster-sacct\n", "", 3), None, "squeue cannot say"),
    ("parse_recover", CommandOutput("5\n6 x\n@@stepcluster-sacct\n", "", 0), None, "unexpected squeue line '6 x'"),
]
SGE_XML = one_job_output("sge", "r")[0].stdout
SGE_ERRORS = [
    ("parse_submit", CommandOutput("Your job 5 has been submitted\n", "", 0), None, "qsub -terse did not print one job id"),
    ("parse_status", CommandOutput(SGE_XML, "error: commlib error", 1), ["42"], "qstat failed"),
    ("parse_status", CommandOutput("<job_info>"), ["42"], "qstat -xml printed no valid XML"),
    ("parse_status", CommandOutput("<other/>"), ["42"], "unexpected qstat -xml document <other>"),
    ("parse_status", CommandOutput("<job_info><job_list><JB_job_number>4</JB_job_number></job_list></job_info>"),
     ["42"], "qstat -xml job entry without number or state"),
    ("parse_accounting", CommandOutput("", "qacct: permission denied", 1), ["5"], "qacct failed for job 5"),
    ("parse_accounting", CommandOutput("==========\njobnumber 6\nfailed 0\nexit_status 0\n"), ["5"],
     "qacct printed no record of job 5"),
    ("parse_accounting", CommandOutput("==========\njobnumber 5\nexit_status 0\n"), ["5"],
     "qacct record of job 5 lacks failed/exit_status"),
    ("parse_accounting", CommandOutput("==========\njobnumber 5\nfailed 0\n"), ["5"],
     "qacct record of job 5 lacks failed/exit_status"),
    ("parse_accounting", CommandOutput("==========\njobnumber 5\nfailed x\nexit_status 0\n"), ["5"],
     "lacks failed/exit_status"),
    ("parse_recover", CommandOutput(SGE_XML, "error", 1), None, "qstat cannot say whether job 'a-1' exists"),
    ("parse_recover", CommandOutput(SGE_XML + "@@stepcluster-qacct\n", "", 1), None, "qstat cannot say"),
    ("parse_recover", CommandOutput(SGE_XML), None, "qstat cannot say"),
    ("parse_recover", CommandOutput("<job_info>\n@@stepcluster-qacct\n"), None, "qstat -xml printed no valid XML"),
]
TORQUE_ERRORS = [
    ("parse_submit", CommandOutput("", "qsub: Unknown queue MSG=cannot locate queue", 1), None,
     "qsub did not print one job id"),
    ("parse_status", CommandOutput("", "", 1), ["1.head"], "qstat -f failed"),
    ("parse_status", CommandOutput("", "qstat: Unknown Job Id 1.head\nqstat: cannot connect to server", 153),
     ["1.head"], "qstat -f failed"),
    ("parse_status", CommandOutput("    job_state = R\n"), ["1.head"], "does not start with 'Job Id:': '    job_state = R'"),
    ("parse_status", CommandOutput("Job Id: 1.head\n    Job_Name = x\n"), ["1.head"],
     "qstat -f record of 1.head has no job_state"),
    ("parse_recover", CommandOutput("", "qstat: cannot connect", 1), None, "qstat -f cannot say whether job 'a-1' exists"),
    ("parse_recover", CommandOutput("", "", 1), None, "qstat -f cannot say"),
    ("parse_recover", CommandOutput("", "qstat: warning\n", 0), None, "qstat -f cannot say"),
    ("parse_recover", CommandOutput("Job Id: 1.head\ngarbage\n"), None, "unexpected qstat -f line 'garbage'"),
]
ERROR_CASES = [("slurm", *c) for c in SLURM_ERRORS] + [("sge", *c) for c in SGE_ERRORS] + [
    ("torque", *c) for c in TORQUE_ERRORS]


@pytest.mark.parametrize("scheduler,method,out,job_ids,match", ERROR_CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(ERROR_CASES)])
def test_every_unreadable_answer_is_a_scheduler_error_with_its_data(scheduler, method, out, job_ids, match):
    adapter = ADAPTERS[scheduler]
    if method == "parse_submit":
        call = lambda: adapter.parse_submit(out)          # noqa: E731
    elif method == "parse_status":
        call = lambda: adapter.parse_status(out, job_ids)  # noqa: E731
    elif method == "parse_accounting":
        call = lambda: adapter.parse_accounting(out, job_ids[0])  # noqa: E731
    else:
        call = lambda: adapter.parse_recover(out, "a-1")  # noqa: E731
    expect_error(call, scheduler, out, job_ids, re.escape(match))


def test_ids_errors_name_the_scheduler_as_people_know_it():
    for adapter, label in ((Slurm(), "Slurm"), (SGE(), "Grid Engine"), (Torque(), "Torque")):
        with pytest.raises(SchedulerError) as caught:
            adapter.cancel_argv([])
        assert str(caught.value) == f"no {label} job ids given"
        with pytest.raises(SchedulerError) as caught:
            adapter.status_argv(["1", "x y"])
        assert str(caught.value) == f"not {label} job ids: ['x y']"


def test_unknown_scheduler_message():
    with pytest.raises(SchedulerError) as caught:
        get_scheduler("pbs")
    assert str(caught.value) == "unknown scheduler 'pbs': expected one of sge, slurm, torque"


class _Minimal(Scheduler):
    name = "minimal"
    STATES = {"R": Category.RUNNING}
    probe_argv = submit_argv = parse_submit = status_argv = parse_status = cancel_argv = resource_options = \
        lambda *a, **k: None


def test_the_defaults_of_a_scheduler_without_history_or_names():
    adapter = _Minimal()
    assert adapter.accounting_argv("1") is None and adapter.recover_argv("a") is None
    assert adapter.parse_accounting(CommandOutput("anything"), "1") == JobStatus("1", Category.MISSING, "")
    out = CommandOutput("x")
    with pytest.raises(SchedulerError) as caught:
        adapter.parse_recover(out, "a")
    assert str(caught.value) == "minimal: no way to find a job by its name"
    assert caught.value.scheduler == "minimal" and caught.value.output is out
    assert adapter.categorize("R") == Category.RUNNING and adapter.categorize("r") == Category.UNKNOWN
    # Torque keeps no history: the defaults
    assert Torque().parse_accounting(CommandOutput(""), "1.head") == JobStatus("1.head", Category.MISSING, "")


# ------------------------------------------------- whole statuses, not just their category
@pytest.mark.parametrize("scheduler,name", [(s, n) for s, n in RECORDED if n.startswith("status_")
                                            and "down" not in n])
def test_every_status_is_about_the_id_asked_and_missing_ones_are_bare(scheduler, name):
    _, st = status_of(scheduler, name)
    for job_id, status in st.items():
        assert status.job_id == job_id
        if status.category == Category.MISSING:
            assert status == JobStatus(job_id, Category.MISSING, "")
        else:
            assert status.raw_state


def test_slurm_rows_blank_lines_repeats_and_empty_fields():
    out = CommandOutput("\n7|RUNNING|1|1:00|0|None\n\n8|PENDING|1|1:00|0|\n7|FAILED|1|1:00|0|None\n"
                        "9|PENDING|1|1:00|0|(null)\n10||1|||None\n11|PENDING|1|1:00|0|  Priority  \n")
    st = Slurm().parse_status(out, ["7", "8", "9", "10", "11", "12"])
    assert st["7"] == JobStatus("7", Category.RUNNING, "RUNNING")          # the first row of an id counts
    assert st["8"] == JobStatus("8", Category.QUEUED, "PENDING")           # empty reason: none
    assert st["9"] == JobStatus("9", Category.QUEUED, "PENDING")           # "(null)": none
    assert st["10"] == JobStatus("10", Category.UNKNOWN, "")
    assert st["11"].reason == "Priority"
    assert st["12"] == JobStatus("12", Category.MISSING, "")


def test_slurm_accounting_statuses_are_whole():
    s = Slurm()
    err = "slurm_load_jobs error: Invalid job id specified\n"
    assert s.parse_accounting(CommandOutput("JobId=77 JobName=x JobState=FAILED Reason=NonZeroExitCode "
                                            "Priority=5 ExitCode=3:0\n"), "77") == JobStatus(
        "77", Category.FAILED, "FAILED", exit_code=3, reason="NonZeroExitCode")
    # another job's record is not this one's: scontrol's or sacct's
    assert s.parse_accounting(CommandOutput("JobId=78 JobState=FAILED ExitCode=1:0\n"), "77") == JobStatus(
        "77", Category.MISSING, "")
    assert s.parse_accounting(CommandOutput("78|FAILED|1:0\n", err, 1), "77") == JobStatus("77", Category.MISSING, "")
    assert s.parse_accounting(CommandOutput("77|COMPLETED|0:0\n78|FAILED|1:0\n", err, 1), "77") == JobStatus(
        "77", Category.SUCCEEDED, "COMPLETED", exit_code=0)
    assert s.parse_accounting(CommandOutput("77|CANCELLED by 0|0:15\n", err, 1), "77") == JobStatus(
        "77", Category.CANCELLED, "CANCELLED by 0", exit_code=0, signal=15)
    assert s.parse_accounting(CommandOutput("", err, 1), "77") == JobStatus("77", Category.MISSING, "")


def test_slurm_recover_reads_both_sources_in_order_without_repeats():
    # in the order the scheduler printed them (not sorted: "7" before "30"), each once
    out = CommandOutput("\n7\n\n30\n@@stepcluster-sacct\n30|a-1\n5|a-1\n6|other\n8|a-1|extra\nx8|a-1\n"
                        "9.batch|a-1\nsacct: error: Slurm accounting storage is disabled\n7|a-1\n")
    assert Slurm().parse_recover(out, "a-1") == ["7", "30", "5"]
    assert Slurm().parse_recover(CommandOutput("@@stepcluster-sacct\n"), "a-1") == []


def test_sge_statuses_are_whole():
    xml = ("<job_info><job_info>"
           "<job_list><JB_job_number>5</JB_job_number><state>r</state></job_list>"
           "<job_list><JB_job_number>5</JB_job_number><state>qw</state></job_list>"
           "<job_list><JB_job_number>6</JB_job_number><state>Eqw</state></job_list>"
           "<job_list><JB_job_number>8</JB_job_number><state>qw</state></job_list>"
           "</job_info></job_info>")
    st = SGE().parse_status(CommandOutput(xml), ["5", "6", "7"])
    assert st["5"] == JobStatus("5", Category.RUNNING, "r")               # array: the first entry counts
    assert st["6"] == JobStatus("6", Category.FAILED, "Eqw", reason="job in error state (see qstat -j)")
    assert st["7"] == JobStatus("7", Category.MISSING, "")


def test_sge_qstat_j_lines_are_read_by_job_and_by_block():
    details = "\n".join([
        "job_number:                 5",
        "    stray indented line",
        "error reason          1:      01/01/2030 00:00:00 [1:2]: first",
        "    indented after the error",
        "error reason          2:      second",
        "scheduling info:            one",
        "\tby a tab",
        "                            by spaces",
        "sge_o_home:                 /x",
        "    after another key",
        "job_number:                 6",
        "scheduling info:            (Collecting of scheduler job information is turned off)",
        "error reason          1:      plain text reason",
    ])
    xml = ("<job_info><job_info>"
           "<job_list><JB_job_number>5</JB_job_number><state>qw</state></job_list>"
           "<job_list><JB_job_number>6</JB_job_number><state>Eqw</state></job_list>"
           "</job_info></job_info>\n")
    st = SGE().parse_status(CommandOutput(xml + "@@stepcluster-qstat-j\n" + details + "\n"), ["5", "6"])
    assert st["5"].reason == "one; by a tab; by spaces"
    assert st["6"].reason == "plain text reason"
    assert sge_module._job_details(details)[0] == {"5": "first", "6": "plain text reason"}


@pytest.mark.parametrize("failed,exit_status,category,code,signal,reason", [
    ("0", "0", Category.SUCCEEDED, 0, None, None),
    ("0", "137", Category.FAILED, 137, None, None),        # a script may `exit 137`
    ("1", "137", Category.FAILED, 137, 9, "failed 1: see sge_status(5)"),
    ("100 : assumedly after job", "128", Category.FAILED, 128, None, "failed 100: assumedly after job"),
    ("100", "129", Category.FAILED, 129, 1, "failed 100: see sge_status(5)"),
    ("0", "3 (exit)", Category.FAILED, 3, None, None),
])
def test_sge_accounting_records(failed, exit_status, category, code, signal, reason):
    text = ("warning: before any record\n==============\njobnumber    5\n\nfailed       " + failed +
            "\nexit_status  " + exit_status + "\n")
    assert SGE().parse_accounting(CommandOutput(text), "5") == JobStatus(
        "5", category, f"failed {failed.split()[0]}", exit_code=code, signal=signal, reason=reason)


def test_sge_accounting_silence_is_missing():
    assert SGE().parse_accounting(CommandOutput("", "", 0), "5") == JobStatus("5", Category.MISSING, "")
    assert SGE().parse_accounting(CommandOutput("", "error: job id 5 not found\n", 1), "5") == JobStatus(
        "5", Category.MISSING, "")


def test_sge_recover_order_repeats_and_bad_records():
    xml = ("<job_info><job_info>"
           "<job_list><JB_job_number>7</JB_job_number><JB_name>a-1</JB_name></job_list>"
           "<job_list><JB_job_number>30</JB_job_number><JB_name>a-1</JB_name></job_list>"
           "<job_list><JB_job_number>9</JB_job_number><JB_name>other</JB_name></job_list>"
           "</job_info></job_info>\n")
    history = "==========\njobname  a-1\njobnumber 30\n==========\njobname a-1\njobnumber 5\n"
    assert SGE().parse_recover(CommandOutput(xml + "@@stepcluster-qacct\n" + history), "a-1") == ["7", "30", "5"]
    for bad, ids in (("==========\njobname a-1\n", ("",)), ("==========\njobname a-1\njobnumber 5x\n", ("5x",))):
        out = CommandOutput(xml + "@@stepcluster-qacct\n" + bad)
        exc = expect_error(lambda: SGE().parse_recover(out, "a-1"), "sge", out, match="not Grid Engine job ids")
        assert exc.job_ids == ids
    nameless = CommandOutput("<job_info><job_list><JB_name>a-1</JB_name></job_list></job_info>\n@@stepcluster-qacct\n")
    assert expect_error(lambda: SGE().parse_recover(nameless, "a-1"), "sge", nameless).job_ids == ("",)


def test_torque_records_are_matched_whole_and_in_order():
    t = Torque()
    text = ("Job Id: 4.other\n    job_state = Q\n\n"
            "Job Id: 5.head\n    job_state = R\n    comment = Job started on n1\n\n"
            "Job Id: 5.head\n    job_state = C\n    exit_status = 0\n\n"
            "Job Id: 6.head\n    Job_Name = no state, not asked\n")
    st = t.parse_status(CommandOutput(text), ["5.head", "5.other", "7.head"])
    assert st["5.head"] == JobStatus("5.head", Category.RUNNING, "R", reason="Job started on n1")
    assert st["5.other"] == JobStatus("5.other", Category.MISSING, "")
    assert st["7.head"] == JobStatus("7.head", Category.MISSING, "")
    # unknown ids beside known ones: exit 153 is fine when every complaint is about an id
    out = CommandOutput("Job Id: 5.head\n    job_state = R\n", "qstat: Unknown Job Id Error 7.head\n", 153)
    assert t.parse_status(out, ["5.head", "7.head"])["7.head"] == JobStatus("7.head", Category.MISSING, "")


@pytest.mark.parametrize("attrs,expected", [
    ({"exit_status": "0"}, JobStatus("5.head", Category.SUCCEEDED, "C", exit_code=0)),
    ({"Exit_status": "0"}, JobStatus("5.head", Category.SUCCEEDED, "C", exit_code=0)),     # PBS Pro
    ({"Exit_status": "2", "exit_status": "0"}, JobStatus("5.head", Category.SUCCEEDED, "C", exit_code=0)),
    ({"exit_status": "256"}, JobStatus("5.head", Category.FAILED, "C", exit_code=256)),
    ({"exit_status": "257"}, JobStatus("5.head", Category.FAILED, "C", exit_code=257, signal=1)),
    ({"exit_status": "3", "comment": "done"}, JobStatus("5.head", Category.FAILED, "C", exit_code=3, reason="done")),
    ({"exit_status": "-99"}, JobStatus("5.head", Category.FAILED, "C", exit_code=-99,
                                       reason="exit_status -99: Torque could not run the job")),
    ({"exit_status": "-1", "comment": "bad uid"}, JobStatus("5.head", Category.FAILED, "C", exit_code=-1,
                                                            reason="exit_status -1: " + JOB_EXEC_CODES[-1] + "; bad uid")),
    ({"exit_status": "x1"}, JobStatus("5.head", Category.FAILED, "C",
                                      reason="completed without a readable exit_status ('x1')")),
])
def test_torque_completed_jobs(attrs, expected):
    text = "Job Id: 5.head\n    job_state = C\n" + "".join(f"    {k} = {v}\n" for k, v in attrs.items())
    assert Torque().parse_status(CommandOutput(text), ["5.head"])["5.head"] == expected


@pytest.mark.parametrize("text,match", [
    ("    job_state = R\n", "does not start with 'Job Id:'"),
    ("Job Id: 1.head\n\tcontinued without a key\n", "unexpected qstat -f line"),
    ("Job Id: 1.head\n    a = b\n\n\tcontinued after a blank line\n", "unexpected qstat -f line"),
    ("Job Id: 1.head\n    a = b\nnot indented\n", "unexpected qstat -f line 'not indented'"),
])
def test_torque_qstat_f_that_is_not_qstat_f(text, match):
    with pytest.raises(SchedulerError, match=match) as caught:
        parse_full(text)
    assert caught.value.scheduler == "torque"


def test_torque_long_values_continue_with_spaces_or_tabs():
    jobs = parse_full("Job Id: 1.head\n    Variable_List = A=1,\n        B=2,\n\tC=3\n    x = \n")
    assert jobs == [("1.head", {"Variable_List": "A=1,B=2,C=3", "x": ""})]


def test_torque_recover_keeps_the_servers_order():
    text = "".join(f"Job Id: {i}.head\n    Job_Name = a-1\n\n" for i in ("7", "30", "7"))
    assert Torque().parse_recover(CommandOutput(text), "a-1") == ["7.head", "30.head"]


# ------------------------------------------------- the blocked words, written from the documentation
_PER_JOB = ("BBMinutesPerJob BBPerJob BBPerNode BillingMinutesPerJob BillingPerJob BillingPerNode "
            "CpuMinutesPerJobLimit CpuPerJobLimit CpuPerNode EnergyMinutesPerJob EnergyPerJob EnergyPerNode "
            "GRESMinutesPerJob GRESPerJob GRESPerNode LicenseMinutesPerJob LicensePerJob {mem}MinutesPerJob "
            "{mem}PerJob {mem}PerNode NodeMinutesPerJob NodePerJobLimit UnknownMinutesPerJob UnknownPerJob "
            "UnknownPerNode WallDurationPerJobLimit").split()
#: What blocks a queued job for good, per scheduler, from the pages cited in each adapter: Slurm's
#: job_reason_codes.html and job_state_codes.html, qstat(1) -s of Grid Engine, qhold(1B) of Torque.
DOCUMENTED_BLOCKED = {
    "slurm reasons": {
        "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "MaxMemPerLimit",
        "InvalidAccount", "InvalidQOS", "AccountNotAllowed", "QOSNotAllowed", "ReservationDeleted",
        "JobHeldUser", "JobHeldAdmin", "JobHoldMaxRequeue", "DependencyNeverSatisfied",
        "NodeDown",     # issue 9: nodes that are down bill and never run it; bounded, then failed
        *("AssocMax" + w.format(mem="Mem") for w in _PER_JOB),
        *("QOSMax" + w.format(mem="Memory") for w in _PER_JOB),
        *("QOSMin" + w for w in "BB Billing CpuNotSatisfied Energy GRES License Memory Node Unknown".split())},
    "slurm states": {"REQUEUE_HOLD", "RESV_DEL_HOLD"},
    "slurm reason texts": {
        "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions"},
    "sge holds": {"hu": "user", "ho": "operator", "hs": "system"},
    "torque hold types": {"u", "o", "s", "p"},
}


def test_every_blocked_word_is_the_documented_one():
    assert set(slurm_module.BLOCKED_REASONS) == DOCUMENTED_BLOCKED["slurm reasons"]
    assert set(slurm_module.BLOCKED_STATES) == DOCUMENTED_BLOCKED["slurm states"]
    assert set(slurm_module.BLOCKED_REASON_TEXTS) == DOCUMENTED_BLOCKED["slurm reason texts"]
    assert sge_module.BLOCKING_HOLDS == DOCUMENTED_BLOCKED["sge holds"]
    assert set(BLOCKING_HOLD_TYPES) == DOCUMENTED_BLOCKED["torque hold types"]
    # each blocked word is a state or reason the adapter reads as queued, never as ended
    assert {Slurm.STATES[s] for s in slurm_module.BLOCKED_STATES} == {Category.QUEUED}
    assert "H" in Torque.STATES and Torque.STATES["H"] == Category.QUEUED
    assert {s: c for s, c in SGE.STATES.items() if s.startswith("h")} == {
        "hqw": Category.QUEUED, "hRwq": Category.QUEUED, "hr": Category.RUNNING}   # held while running: runs on


def test_sge_a_job_stuck_transferring_is_blocked():
    """Recorded on the rig with sge_execd stopped: the job stays `t` for ever. It is still a
    running job, but one that cannot go on by itself: blocked, so the run fails after
    BlockedJobTimeoutSeconds instead of polling it for ever."""
    jobs, statuses = status_of("sge", "status_transferring_stuck")
    stuck = statuses[jobs["stuck"]]
    assert (stuck.category, stuck.raw_state) == (Category.RUNNING, "t")
    assert stuck.blocked == ("transferring (t) to an execution host that has not started it "
                             "(is its sge_execd down?)")
    for state, blocked in (("r", False), ("Rt", True), ("ts", False), ("Rr", False)):
        out, job_id = one_job_output("sge", state)
        assert (SGE().parse_status(out, [job_id])[job_id].blocked is not None) is blocked, state


@pytest.mark.parametrize("scheduler, name, unavailable", [
    ("slurm", "submit_controller_down", True), ("slurm", "status_controller_down", True),
    ("slurm", "accounting_controller_down", True),
    ("sge", "submit_qmaster_down", True), ("sge", "status_qmaster_down", True),
    ("sge", "cancel_qmaster_down", True), ("sge", "accounting_qmaster_down", False),
    ("sge", "submit_unknown_queue", False), ("sge", "submit_unknown_pe", False),
    ("slurm", "submit", False), ("sge", "submit", False),
])
def test_a_controller_that_does_not_answer_is_told_from_a_refusal(scheduler, name, unavailable):
    """Recorded on the rig with slurmctld / sge_qmaster stopped: an outage the run rides out,
    where a refusal (an unknown queue) fails the job at once."""
    _, out = load(scheduler, name)
    assert ADAPTERS[scheduler].unavailable(out) is unavailable
    assert not ADAPTERS[scheduler].unavailable(CommandOutput(out.stdout, out.stderr, 0))   # it answered


def test_torque_says_it_cannot_connect_to_its_server():
    down = CommandOutput("", "qsub: cannot connect to server head (errno=111) Connection refused\n", 111)
    assert Torque().unavailable(down) and not Torque().unavailable(CommandOutput("", "qsub: Unknown queue\n", 1))
