"""Handler directives read as each scheduler reads them, and the options stepcluster overrides or
refuses, wherever they are written (handler or scheduler_options)."""

from __future__ import annotations

import subprocess

import pytest

from stepcluster import directives, jobscripts
from stepcluster.directives import read_directives
from stepcluster.errors import RequestRefused
from stepcluster.jobrequests import request_for
from stepcluster.resources import Resources
from stepcluster.schedulers import get_scheduler

SLURM, SGE, TORQUE = (get_scheduler(n) for n in ("slurm", "sge", "torque"))

SCRIPT = """#!/bin/bash
# a comment, then a blank line

#SBATCH --ntasks=2   # two tasks
  # an indented comment does not end the block
#SBATCHX is no directive
#SBATCH -o mine.out
#$ -pe smp 2
#PBS -l nodes=1:ppn=2
echo first command
#SBATCH --hold
#$ -t 1-3
#PBS -h
"""


def lines(scheduler, text=SCRIPT):
    return [(d.line, d.options) for d in read_directives(text, scheduler.DIRECTIVES)]


def test_slurm_and_pbs_stop_at_the_first_command_grid_engine_reads_every_line():
    assert lines(SLURM) == [(4, ("--ntasks=2",)), (7, ("-o", "mine.out"))]
    assert lines(TORQUE) == [(9, ("-l", "nodes=1:ppn=2"))]
    assert lines(SGE) == [(8, ("-pe", "smp", "2")), (12, ("-t", "1-3"))]


def test_the_head_node_reads_the_same_lines_as_python(tmp_path):
    """AWK_CANDIDATES (run on the head node) and read_directives agree, CRLF lines included."""
    text = SCRIPT.replace("#SBATCH -o mine.out\n", "#SBATCH -o mine.out\r\n")
    (tmp_path / "jobs" / "a" / "src").mkdir(parents=True)
    (tmp_path / "jobs" / "a" / "src" / "run.sh").write_text(text)
    for scheduler in (SLURM, SGE, TORQUE):
        syntax = scheduler.DIRECTIVES
        script = jobscripts.directive_lines_script(str(tmp_path), [("a", "run.sh")], prefix=syntax.prefix,
                                                   whole_file=syntax.whole_file, max_bytes=65536)
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
        (record,) = jobscripts.parse_records(out)
        remote = directives.directives_of(directives.parse_candidates(jobscripts.unb64(record.fields[1])), syntax)
        assert remote == read_directives(text, syntax) and remote
        assert directives.staged_directives(text.encode(), syntax) == remote   # ssh staging reads them here


def test_a_handler_at_hand_is_read_up_to_the_head_nodes_limit_in_whole_lines():
    syntax = SGE.DIRECTIVES                       # Grid Engine reads every line
    line = "#$ -l h_rt=00:01:00 " + "x" * 80
    many = "\n".join([line] * (directives.MAX_SCRIPT_BYTES // 80)) + "\n"
    found = directives.staged_directives(many.encode(), syntax)
    sent = sum(len(f"{d.line}\t{line}\n") for d in found)
    assert 0 < len(found) < many.count("\n") and sent <= directives.MAX_SCRIPT_BYTES
    assert all(d.options[:2] == ("-l", "h_rt=00:01:00") for d in found)   # no line cut short
    assert directives.staged_directives(b"\x7fELF#$ -l h_rt=1\n#$ -pe smp 2\n", syntax) == []


@pytest.mark.parametrize("scheduler, options, refused", [
    (SLURM, ["--wait"], "--wait"),
    (SLURM, ["-W"], "-W"),
    (SLURM, ["-HW"], "-H"),                          # a bundle of flags: both found
    (SLURM, ["--dep=afterok:1"], "--dep=afterok:1"),  # getopt_long's unique prefix
    (SLURM, ["--dependency", "afterok:1"], "--dependency afterok:1"),
    (SLURM, ["--array=1-3"], "--array=1-3"),
    (SLURM, ["--export=NONE"], "--export=NONE"),
    (SLURM, ["--export=PATH"], "--export=PATH"),
    (SGE, ["-sync", "y"], "-sync y"),
    (SGE, ["-hold_jid", "3"], "-hold_jid 3"),
    (SGE, ["-t", "1-3"], "-t 1-3"),
    (SGE, ["-b", "yes"], "-b yes"),
    (TORQUE, ["-W", "depend=afterok:1"], "-W depend=afterok:1"),
    (TORQUE, ["-Wblock=true"], "-W block=true"),
    (TORQUE, ["-t", "1-3"], "-t 1-3"),
])
def test_options_that_break_tracking_are_refused(scheduler, options, refused):
    found = directives.find(options, scheduler.DIRECTIVES, scheduler.OPTION_RULES)
    assert refused in [option for option, rule in found if rule.effect == directives.REFUSED]


@pytest.mark.parametrize("scheduler, options", [
    (SLURM, ["--export=ALL,FOO=1"]),
    (SLURM, ["--wait-all-nodes=1"]),           # not a prefix of --wait: a different option
    (SLURM, ["--comment=--wait"]),             # a value, not an option (write values that
                                               # start with "-" as --option=value)
    (SLURM, ["-J", "x"]),                      # overridden, not refused
    (SGE, ["-sync", "n"]),
    (SGE, ["-b", "n", "-cwd", "-V"]),
    (TORQUE, ["-W", "umask=022"]),
    (TORQUE, ["-l", "walltime=1:00:00"]),
])
def test_options_that_do_not_break_tracking_pass(scheduler, options):
    found = directives.find(options, scheduler.DIRECTIVES, scheduler.OPTION_RULES)
    assert [o for o, rule in found if rule.effect == directives.REFUSED] == []


def test_a_refused_directive_names_the_handler_its_line_and_why():
    found = read_directives("#!/bin/bash\n#SBATCH -n 2\n#SBATCH --wait\n", SLURM.DIRECTIVES)
    with pytest.raises(RequestRefused) as caught:
        request_for(SLURM, Resources(), found, "src/run.sh")
    assert caught.value.problems == [
        "handler src/run.sh line 3: '#SBATCH --wait': --wait is refused: sbatch would not return "
        "until the job ends: the run needs the job id at once"]


def test_the_request_carries_the_directives_and_puts_the_config_keys_on_the_command_line():
    found = read_directives("#!/bin/bash\n#SBATCH -n 2 -o x.out\necho\n", SLURM.DIRECTIVES)
    request = request_for(SLURM, Resources(tasks=3, time_limit=300), found, "run.sh")
    assert request.directives == ("#SBATCH -n 2 -o x.out",)
    assert request.argv == ("--ntasks=3", "--time=0:05:00")
    assert request.overridden and "-o x.out is overridden" in request.overridden[0]
    argv = SLURM.submit_argv("/r/run.sh", job_name="a-1", workdir="/r/src", stdout="/r/o", stderr="/r/e",
                             request=request.argv)
    # the request comes first: the options stepcluster tracks the job by come after and win
    assert argv.index("--ntasks=3") < argv.index("-o") and argv[-1] == "/r/run.sh"


def test_the_wrapper_carries_the_directives_before_its_first_command():
    wrapper = jobscripts.wrapper_script(run_dir="/r", name="a", handler="run.sh", env={},
                                        directives=["#SBATCH --ntasks=2"])
    found = read_directives(wrapper, SLURM.DIRECTIVES)
    assert [d.options for d in found] == [("--ntasks=2",)]


@pytest.mark.parametrize("text, words", [
    ("--ntasks=2   # two tasks", ("--ntasks=2",)),
    ("--comment=a#b -n 1", ("--comment=a#b", "-n", "1")),
    ('--comment="two words" -n 1', ("--comment=two words", "-n", "1")),
    ("", ()),
])
def test_directive_words_split_like_a_shell(text, words):
    assert directives.split_options(text) == words


def test_validate_for_a_scheduler_names_the_handler_line_and_the_config_key(tmp_path, capsys):
    from stepcluster import cli

    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "run.sh").write_text("#!/bin/bash\n#SBATCH -o mine.out\n#SBATCH --wait\n#$ -sync y\necho\n")
    (tmp_path / "jobs.ini").write_text("[order]\nsequential = a\n\n[job a]\nhandler = run.sh\nlocal_path = job\n"
                                       "nodes = 2\nscheduler_options = --export=NONE\n")
    assert cli.main(["validate", str(tmp_path / "jobs.ini")]) == 0      # no scheduler named: the grammar only
    assert cli.main(["validate", str(tmp_path / "jobs.ini"), "--scheduler", "slurm"]) == 2
    err = capsys.readouterr().err.replace(str(tmp_path), "<tmp>")
    assert "<tmp>/job/run.sh:2: warning: [job a] '#SBATCH -o mine.out': -o mine.out is overridden" in err
    assert "<tmp>/job/run.sh:3: [job a] '#SBATCH --wait': --wait is refused" in err
    assert "<tmp>/jobs.ini:8: [job a] scheduler_options: slurm: '--export=NONE' is refused" in err
    assert cli.main(["validate", str(tmp_path / "jobs.ini"), "--scheduler", "sge"]) == 2
    err = capsys.readouterr().err.replace(str(tmp_path), "<tmp>")
    assert "<tmp>/job/run.sh:4: [job a] '#$ -sync y': -sync y is refused" in err
    assert "<tmp>/jobs.ini:7: [job a] nodes: sge: Grid Engine places slots, not nodes" in err


def test_slurm_names_the_limit_a_job_passed():
    from stepcluster.schedulers import CommandOutput

    out = CommandOutput("5|TIMEOUT|0|1:00|0|TimeLimit\n6|OUT_OF_MEMORY|0|UNLIMITED|100M|OutOfMemory\n"
                        "7|FAILED|0|1:00|100M|NonZeroExitCode\n")
    status = SLURM.parse_status(out, ["5", "6", "7"])
    assert status["5"].limit == "time limit 0:01:00 (Slurm: TIMEOUT)"
    assert status["6"].limit == "memory limit 100M (Slurm: OUT_OF_MEMORY)"
    assert status["7"].limit is None


def test_the_limit_a_job_passed_is_read_from_the_schedulers_own_words():
    # the rig's slurmstepd, a job of --mem=50M that allocated 300 MB
    tail = ("slurmstepd-localhost: error: StepId=28.batch exceeded memory limit (325697536 > 52428800), being killed\n"
            "slurmstepd-localhost: error: Exceeded job memory limit\n")
    assert SLURM.limit_in_stderr(tail, Resources(memory_kib=51200)) == \
        "memory limit 50M (Slurm: 'exceeded memory limit (325697536 > 52428800)')"
    assert SLURM.limit_in_stderr("*** JOB 27 ON localhost CANCELLED AT 2026-12-02T12:50:49 DUE TO TIME LIMIT ***",
                                 Resources(time_limit=60)).startswith("time limit 0:01:00 (Slurm:")
    assert SLURM.limit_in_stderr("Traceback ... ValueError", Resources()) is None
    # Grid Engine's h_vmem is a ulimit: the program's own words, the request's value per slot
    assert SGE.limit_in_stderr("MemoryError\n", Resources(memory_kib=4 * 1024 * 1024, tasks=4)).startswith(
        "memory limit h_vmem=1G per slot (Grid Engine sets it as the job's virtual-memory ulimit")
    assert TORQUE.limit_in_stderr("=>> PBS: job killed: walltime 65 exceeded limit 60\n", Resources()) == \
        "time limit walltime=60 (Torque: 'PBS: job killed: walltime 65 exceeded limit 60')"


def test_grid_engine_accounting_names_the_limit_that_killed_a_job():
    from stepcluster.schedulers.sge import _limit_failure

    # what qacct printed on the rig for `-l h_rt=5,h_vmem=100M -pe smp 2` of `sleep 60`
    record = {"failed": "37  : qmaster enforced h_rt, h_cpu, or h_vmem limit", "ru_wallclock": "5s",
              "category": "-l h_rt=5,h_vmem=100M -pe smp 2"}
    assert _limit_failure(37, record) == \
        "time limit h_rt=5 (Grid Engine: failed 37: qmaster enforced h_rt, h_cpu, or h_vmem limit)"
    assert _limit_failure(37, {**record, "ru_wallclock": "1s", "category": "-l h_vmem=100M"}).startswith(
        "memory limit h_vmem=100M")
    assert _limit_failure(0, record) is None
