"""The bash that jobscripts generates, run with a real local bash against fake schedulers.

Every script runs here the way the service runs it on a head node (`bash -s`, script on stdin),
in a folder under tmp_path with HOME and TMPDIR pointing there too; a "scheduler" is a small
script on PATH or an argv such as ["sh", "-c", ...]. What is asserted is what the service reads:
the `@@` records (parsed with jobscripts.parse_records), the files left in the run's folder and
the exit codes.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import tarfile
import time
from shlex import quote as q
from pathlib import Path

import pytest

from stepcluster import jobscripts
from stepcluster.jobscripts import Record, parse_records, unb64
from stepcluster.schedulers import CommandOutput

# names and paths that only survive when every value is quoted for the shell
AWKWARD = ["with space", "it's", 'say "hi"', "$HOME", "-n", "--version", "a;b", "`id`", "*", "\\x"]
AWKWARD_DIR = "run dir/it's $HOME -x"


@pytest.fixture
def box(tmp_path):
    """A head node in a folder: HOME, TMPDIR, a bin folder first on PATH, a run folder."""
    class Box:
        home = tmp_path / "home"
        tmp = tmp_path / "tmp"
        bin = tmp_path / "bin"
        run_dir = str(tmp_path / AWKWARD_DIR)
        env = {**os.environ, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"),
               "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "LC_ALL": "C"}

        def bash(self, script: str, *, binary: bool = False, cwd=None) -> subprocess.CompletedProcess:
            return subprocess.run(["bash", "-s"], input=script.encode(), capture_output=True,
                                  env=self.env, cwd=cwd or tmp_path, timeout=60) if binary else \
                subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True,
                               env=self.env, cwd=cwd or tmp_path, timeout=60)

        def command(self, name: str, body: str) -> None:
            path = self.bin / name
            path.write_text("#!/bin/sh\n" + body)
            path.chmod(0o755)

        def job(self, name: str) -> Path:
            path = Path(jobscripts.job_dir(self.run_dir, name))
            path.mkdir(parents=True, exist_ok=True)
            return path

    for folder in (Box.home, Box.tmp, Box.bin):
        folder.mkdir()
    return Box()


def records(stdout: str, tag: str | None = None) -> list[Record]:
    return [r for r in parse_records(stdout) if tag is None or r.tag == tag]


def enc(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ------------------------------------------------------------------------------ records
def test_parse_records_reads_only_tagged_lines_and_keeps_every_field():
    out = "noise\n@@job a  Zm9v\n  @@not-at-start x\n@@status 0 \n@@\n@@cmd l 1 eA== eQ==\r\n"
    assert parse_records(out) == [
        Record("job", ("a", "", "Zm9v")),
        Record("status", ("0", "")),
        Record("", ()),
        Record("cmd", ("l", "1", "eA==", "eQ==")),
    ]
    assert parse_records("") == [] and parse_records("@ @x\n") == []


def test_unb64_decodes_what_base64_w0_prints():
    assert unb64(enc("two\nlines $x 'q'\n")) == "two\nlines $x 'q'\n"
    assert unb64("=12;cluster") == "12;cluster\n"          # a plain one-line answer, passed as it is
    assert unb64("") == "" and unb64(None) == ""
    assert unb64(base64.b64encode(b"\xff ok").decode()) == "\ufffd ok"      # never raises on bytes


def test_command_output_reads_the_exit_code_then_both_streams():
    submit = Record("submit", ("job", "1", enc("out"), enc("err")))
    assert jobscripts.command_output(submit, 1) == CommandOutput("out", "err", 1)
    status = Record("status", ("153", "", enc("qstat: Unknown Job Id 5.head\n")))
    assert jobscripts.command_output(status, 0) == CommandOutput("", "qstat: Unknown Job Id 5.head\n", 153)


def test_job_dir_layout():
    assert jobscripts.job_dir("/r/x", "j1") == "/r/x/jobs/j1"
    assert jobscripts.RESULT_FILES == ("stdout", "stderr", "result", "output")


# ------------------------------------------------------------------------------ run folder
@pytest.mark.parametrize("root", ["stepcluster-runs", "my runs/it's $x", "/ABS"])
def test_prepare_run_makes_the_folder_and_prints_it(box, tmp_path, root):
    if root == "/ABS":
        root = str(tmp_path / "abs root/-r $x")
    execution = "exec-1 'q' $y"
    p = box.bash(jobscripts.prepare_run_script("slurm", ["sh", "-c", "echo fine; exit 0"], root, execution))
    expected = (root if root.startswith("/") else f"{box.home}/{root}") + "/" + execution
    assert (p.returncode, p.stderr) == (0, "")
    assert records(p.stdout) == [Record("run_dir", tuple(expected.split(" ")))]
    assert p.stdout == f"@@run_dir {expected}\n"        # the probe's own output is not printed
    assert Path(expected, "jobs").is_dir()
    # the service finds it again later
    found = box.bash(jobscripts.find_run_script(root, execution))
    assert (found.returncode, found.stdout, found.stderr) == (0, f"@@run_dir {expected}\n", "")
    # twice is fine (a retried Lambda)
    again = box.bash(jobscripts.prepare_run_script("slurm", ["true"], root, execution))
    assert (again.returncode, again.stdout) == (0, f"@@run_dir {expected}\n")


def test_prepare_run_passes_the_probe_argv_untouched(box):
    box.command("probe", 'printf "%s|" "$@" > "$HOME/argv"\n')
    argv = ["probe", *AWKWARD]
    p = box.bash(jobscripts.prepare_run_script("sge", argv, "r", "e"))
    assert p.returncode == 0
    assert (box.home / "argv").read_text() == "|".join(AWKWARD) + "|"


def test_prepare_run_fails_with_the_schedulers_last_words_when_it_does_not_answer(box):
    probe = ["sh", "-c", 'for i in 1 2 3 4 5 6 7; do echo "line $i"; done; echo "to stderr" >&2; exit 1']
    p = box.bash(jobscripts.prepare_run_script("Grid Engine", probe, "runs", "e1"))
    assert p.returncode == 3
    assert p.stdout == "" and records(p.stdout) == []
    assert p.stderr == ("Grid Engine does not answer on this head node:\n"
                        "line 4\nline 5\nline 6\nline 7\nto stderr\n")
    assert not (box.home / "runs").exists()
    # a probe that is not installed at all
    p = box.bash(jobscripts.prepare_run_script("torque", ["qstat-not-installed", "-B"], "runs", "e1"))
    assert p.returncode == 3 and "torque does not answer" in p.stderr and "not found" in p.stderr
    assert not (box.home / "runs").exists()


def test_find_run_prints_nothing_when_there_is_no_run(box, tmp_path):
    for root in ("runs", str(tmp_path / "abs")):
        p = box.bash(jobscripts.find_run_script(root, "missing exec"))
        assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    (box.home / "runs" / "plainfile").parent.mkdir(parents=True)
    (box.home / "runs" / "plainfile").write_text("")          # a file is not a run folder
    p = box.bash(jobscripts.find_run_script("runs", "plainfile"))
    assert p.stdout == ""
    (box.home / "runs" / "ex $1").mkdir()
    p = box.bash(jobscripts.find_run_script("runs", "ex $1"))
    assert p.stdout == f"@@run_dir {box.home}/runs/ex $1\n"


# ------------------------------------------------------------------------------ the wrapper
def wrapper(box, name="job-1", handler="main.sh", body="echo hello\n", env=None, mode=0o644):
    d = box.job(name)
    (d / "src").mkdir(exist_ok=True)
    if body is not None:
        path = Path(handler) if handler.startswith("/") else d / "src" / handler
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        path.chmod(mode)
    script = jobscripts.wrapper_script(run_dir=box.run_dir, name=name, handler=handler, env=env or {})
    (d / "run.sh").write_text(script)
    return d, script


def run_wrapper(box, d: Path) -> subprocess.CompletedProcess:
    # as a scheduler runs it: bash on the file, from another folder, output to the job's files
    with open(d / "stdout", "w") as out, open(d / "stderr", "w") as err:
        return subprocess.run(["bash", str(d / "run.sh")], stdout=out, stderr=err, env=box.env,
                              cwd=box.tmp, timeout=60)


def result_of(d: Path) -> tuple[int, int, int]:
    text = (d / "result").read_text()
    assert re.fullmatch(r"-?\d+ \d+ \d+\n", text), text
    code, signal, ended = map(int, text.split())
    return code, signal, ended


def test_wrapper_is_a_batch_script_that_records_success(box):
    before = int(time.time())
    d, script = wrapper(box, body='echo "hello from $PWD"\necho warn >&2\n')
    assert script.startswith("#!/bin/bash\n")          # sbatch refuses scripts without it
    p = run_wrapper(box, d)
    after = int(time.time())
    assert p.returncode == 0
    code, signal, ended = result_of(d)
    assert (code, signal) == (0, 0) and before <= ended <= after
    assert before <= int((d / "started").read_text()) <= ended
    assert (d / "stdout").read_text() == f"hello from {d}/src\n"      # ran in its staged folder
    assert (d / "stderr").read_text() == "warn\n"                      # nothing of the wrapper's own
    assert (d / "output").is_dir()
    assert not (d / "result.tmp").exists()


def test_wrapper_gives_the_handler_its_folders_and_environment(box):
    env = {"PLAIN": "x", "TRICKY": "it's \"$HOME\" `id` $(id) \\n\nline2", "EMPTY": "", "A_B": "-n"}
    body = ('printf "%s\\n" "$STEPCLUSTER_JOB_DIR" "$STEPCLUSTER_SOURCE" "$STEPCLUSTER_OUTPUT" "$PLAIN" '
            '"$EMPTY" "$A_B" > "$STEPCLUSTER_OUTPUT/env"\nprintf "%s" "$TRICKY" > "$STEPCLUSTER_OUTPUT/tricky"\n'
            'sh -c \'printf "%s" "$TRICKY"\' > "$STEPCLUSTER_OUTPUT/exported"\n')
    d, _ = wrapper(box, name="env-job", body=body, env=env)
    assert run_wrapper(box, d).returncode == 0
    assert (d / "output" / "env").read_text().split("\n")[:-1] == [
        str(d), f"{d}/src", f"{d}/output", "x", "", "-n"]
    assert (d / "output" / "tricky").read_text() == env["TRICKY"]
    assert (d / "output" / "exported").read_text() == env["TRICKY"]     # exported, not just set
    assert (d / "stderr").read_text() == ""


def test_wrapper_records_the_handlers_exit_code(box):
    d, _ = wrapper(box, body="echo before\nexit 3\necho after\n")
    assert run_wrapper(box, d).returncode == 3
    assert result_of(d)[:2] == (3, 0)
    assert (d / "stdout").read_text() == "before\n"


@pytest.mark.parametrize("code,signal", [(1, 0), (127, 0), (128, 0), (129, 1), (159, 31), (160, 0), (255, 0)])
def test_wrapper_reads_exit_codes_above_128_as_signals_only_in_the_signal_range(box, code, signal):
    # bash reports a child killed by signal N as 128 + N: the wrapper records N beside the code
    d, _ = wrapper(box, body=f"exit {code}\n")
    assert run_wrapper(box, d).returncode == code
    assert result_of(d)[:2] == (code, signal)


# (not SIGINT or SIGHUP: a background or nohup parent leaves them ignored, and the handler inherits that)
@pytest.mark.parametrize("signame,number,shebang", [
    ("TERM", 15, ""), ("KILL", 9, ""), ("TERM", 15, "#!/bin/sh\n"),
    ("SEGV", 11, "#!/bin/sh\n"), ("USR1", 10, "#!/bin/bash\n"),
])
def test_wrapper_records_the_signal_that_killed_the_handler(box, signame, number, shebang):
    d, _ = wrapper(box, body=f"{shebang}echo started\nkill -{signame} $$\necho not reached\n")
    p = run_wrapper(box, d)
    assert p.returncode == 128 + number
    assert result_of(d)[:2] == (128 + number, number)
    assert (d / "stdout").read_text() == "started\n"


def test_wrapper_runs_a_handler_with_a_shebang_by_its_interpreter(box):
    # not executable as staged: the wrapper makes it so, then the kernel reads the #! line
    d, _ = wrapper(box, handler="show.txt", body="#!/bin/cat\nplain text, not a shell script\n", mode=0o644)
    assert run_wrapper(box, d).returncode == 0
    assert (d / "stdout").read_text() == "#!/bin/cat\nplain text, not a shell script\n"
    assert os.access(d / "src" / "show.txt", os.X_OK)
    assert result_of(d)[:2] == (0, 0)


def test_wrapper_runs_a_handler_without_a_shebang_with_bash(box):
    d, _ = wrapper(box, body='[ -n "$BASH_VERSION" ] && echo "bash $0"\nshopt -q extglob; echo ok\n', mode=0o644)
    assert run_wrapper(box, d).returncode == 0
    assert (d / "stdout").read_text() == "bash ./main.sh\nok\n"
    assert not os.access(d / "src" / "main.sh", os.X_OK)      # left as staged


@pytest.mark.parametrize("handler", ["--version", "-x.sh", "it's a $HOME.sh", "sub dir/-n", "`id`.sh", "*"])
def test_wrapper_runs_handlers_with_awkward_names_as_files(box, handler):
    d, _ = wrapper(box, handler=handler, body='echo "ran $0"\nexit 4\n')
    assert run_wrapper(box, d).returncode == 4
    assert (d / "stdout").read_text() == f"ran ./{handler}\n"
    assert result_of(d)[:2] == (4, 0)
    assert (d / "stderr").read_text() == ""
    d, _ = wrapper(box, name="shebang-" + str(len(handler)), handler=handler,
                   body='#!/bin/sh\necho "sh $0"\n')
    assert run_wrapper(box, d).returncode == 0
    assert (d / "stdout").read_text() == f"sh ./{handler}\n"


def test_wrapper_runs_an_absolute_handler_path(box, tmp_path):
    handler = str(tmp_path / "shared tools" / "-tool.sh")
    d, _ = wrapper(box, handler=handler, body='echo "abs $0 in $PWD"\n')
    assert run_wrapper(box, d).returncode == 0
    assert (d / "stdout").read_text() == f"abs {handler} in {d}/src\n"


def test_wrapper_records_127_for_a_missing_handler(box):
    d, _ = wrapper(box, handler="nope.sh", body=None)
    assert run_wrapper(box, d).returncode == 127
    assert result_of(d)[:2] == (127, 0)
    assert (d / "stderr").read_text() == (
        f"stepcluster: the handler nope.sh is not a file in {d}/src\n")
    # a folder of that name is not a handler either
    d, _ = wrapper(box, name="dir-handler", handler="sub", body=None)
    (d / "src" / "sub").mkdir()
    assert run_wrapper(box, d).returncode == 127 and result_of(d)[:2] == (127, 0)


def test_wrapper_records_127_when_the_source_folder_is_gone(box):
    d, _ = wrapper(box)
    (d / "src" / "main.sh").unlink()
    (d / "src").rmdir()
    assert run_wrapper(box, d).returncode == 127
    assert result_of(d)[:2] == (127, 0)
    assert (d / "stderr").read_text().endswith(f"\nstepcluster: cannot enter {d}/src\n")
    assert (d / "started").exists() and (d / "output").is_dir()


def test_wrapper_overwrites_an_old_result(box):
    d, _ = wrapper(box, body="exit 5\n")
    (d / "result").write_text("0 0 1\n")
    (d / "result.tmp").write_text("junk")
    assert run_wrapper(box, d).returncode == 5
    assert result_of(d)[:2] == (5, 0) and not (d / "result.tmp").exists()


# ------------------------------------------------------------------------------ submission
def test_submission_name_is_deterministic_per_execution_job_and_attempt():
    name = jobscripts.submission_name("exec-1", "job_a")
    assert re.fullmatch(r"job_a-[0-9a-f]{12}", name)
    assert name == jobscripts.submission_name("exec-1", "job_a", 1) == jobscripts.submission_name("exec-1", "job_a", "1")
    others = {jobscripts.submission_name("exec-1", "job_a", 2), jobscripts.submission_name("exec-2", "job_a"),
              jobscripts.submission_name("exec-1", "job_b")}
    assert name not in others and len(others) == 3
    assert jobscripts.submission_name("exec-1", "job_b").startswith("job_b-")
    # the fields are kept apart: ("ab", "c") is not ("a", "bc")
    assert jobscripts.submission_name("ab", "c")[2:] != jobscripts.submission_name("a", "bc")[3:]
    # a documented value: sha256 of "EXECUTION\0NAME\0ATTEMPT", first 12 hex digits
    import hashlib
    assert name == "job_a-" + hashlib.sha256(b"exec-1\x00job_a\x001").hexdigest()[:12]


def fake_submit(log: Path, *, rc: int = 0, stdout: str = "", stderr: str = "") -> list[str]:
    """An argv that records its cwd, whether the intent file existed and its argv, then answers."""
    script = ('{ printf "%s" "$PWD"; [ -e submit.intent ] && printf " intent"; printf " |"; '
              'printf "%s|" "$@"; echo; } >> "$0"; '
              f'printf %s {repr_sh(stdout)}; printf %s {repr_sh(stderr)} >&2; exit {rc}')
    return ["sh", "-c", script, str(log)]


def repr_sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_submit_records_each_answer_and_never_submits_twice(box, tmp_path):
    log = tmp_path / "submits.log"
    jobs = [("a", [*fake_submit(log, stdout="101\n", stderr="note\n"), *AWKWARD]),
            ("b-2", fake_submit(log, stdout="102;cluster\n"))]
    for name, _ in jobs:
        box.job(name)
    script = jobscripts.submit_script(box.run_dir, jobs, concurrency=1)     # the log in order
    p = box.bash(script)
    assert (p.returncode, p.stderr) == (0, "")
    assert records(p.stdout) == [Record("submit", ("a", "0", "=101", enc("note\n"))),
                                 Record("submit", ("b-2", "0", "=102;cluster", ""))]
    a = Path(jobscripts.job_dir(box.run_dir, "a"))
    # run from the job's folder, the intent written before, every argument as given
    assert log.read_text().splitlines() == [
        f"{a} intent |" + "|".join(AWKWARD) + "|",
        f"{Path(jobscripts.job_dir(box.run_dir, 'b-2'))} intent ||"]      # printf's format, once
    assert (a / "submit.rc").read_text() == "0\n" and (a / "submit.out").read_text() == "101\n"
    assert (a / "submit.err").read_text() == "note\n" and (a / "submit.intent").exists()
    # a retried Lambda: nothing submitted again, the same records printed
    again = box.bash(script)
    assert again.stdout == p.stdout and again.returncode == 0
    assert len(log.read_text().splitlines()) == 2


def test_submit_stops_at_the_first_refusal_and_retries_it_later(box, tmp_path):
    log = tmp_path / "submits.log"
    for name in ("first", "refused", "never"):
        box.job(name)
    jobs = [("first", fake_submit(log, stdout="1\n")),
            ("refused", fake_submit(log, rc=1, stderr="sbatch: error: Batch job submission failed\n")),
            ("never", fake_submit(log, stdout="3\n"))]
    p = box.bash(jobscripts.submit_script(box.run_dir, jobs, concurrency=1))
    assert p.returncode == 0
    assert records(p.stdout) == [
        Record("submit", ("first", "0", "=1", "")),
        Record("submit", ("refused", "1", "", enc("sbatch: error: Batch job submission failed\n")))]
    never = Path(jobscripts.job_dir(box.run_dir, "never"))
    assert not (never / "submit.intent").exists() and not (never / "submit.rc").exists()
    assert len(log.read_text().splitlines()) == 2
    # next attempt: the refused job is submitted again (its rc is not 0), then the rest
    jobs[1] = ("refused", fake_submit(log, stdout="2\n"))
    p = box.bash(jobscripts.submit_script(box.run_dir, jobs, concurrency=1))
    assert records(p.stdout, "submit") == [
        Record("submit", ("first", "0", "=1", "")),
        Record("submit", ("refused", "0", "=2", "")),
        Record("submit", ("never", "0", "=3", ""))]
    assert len(log.read_text().splitlines()) == 4


def test_submit_goes_on_past_a_refusal_when_each_job_stands_alone(box, tmp_path):
    log = tmp_path / "submits.log"
    for name in ("first", "refused", "after"):
        box.job(name)
    jobs = [("first", fake_submit(log, stdout="1\n")), ("refused", fake_submit(log, rc=1)),
            ("after", fake_submit(log, stdout="3\n"))]
    p = box.bash(jobscripts.submit_script(box.run_dir, jobs, concurrency=1, stop_at_refusal=False))
    assert [(r.fields[0], r.fields[1]) for r in records(p.stdout)] == [("first", "0"), ("refused", "1"), ("after", "0")]


def test_submit_sends_a_batch_at_once_reports_it_whole_and_stops_after_a_refusal(box, tmp_path):
    log = tmp_path / "submits.log"
    names = [f"j{i}" for i in range(7)]
    for name in names:
        box.job(name)
    slow = ["bash", "-c", f'sleep 1; echo "$PWD" >> {q(str(log))}; echo 5']
    jobs = [(n, slow) for n in names[:4]] + [("refused", fake_submit(log, rc=1))] + [(n, slow) for n in names[4:]]
    box.job("refused")
    began = time.monotonic()
    p = box.bash(jobscripts.submit_script(box.run_dir, jobs, concurrency=5))
    assert time.monotonic() - began < 3.5                   # 5 at once, not one after the other
    got = records(p.stdout)
    assert [(r.fields[0], r.fields[1]) for r in got] == [(n, "0") for n in names[:4]] + [("refused", "1")]
    assert len(log.read_text().splitlines()) == 5           # the batch after the refusal never went
    assert not Path(jobscripts.job_dir(box.run_dir, "j4"), "submit.intent").exists()


@pytest.mark.parametrize("answer, field", [
    ("12.head\n", "=12.head"), ("12_[1-8]\n", None), ("Submitted batch job 5\n", None),
    ("5\n6\n", None), ("5\r\n", None), ("7", "=7")])
def test_submit_passes_a_plain_job_id_as_it_is_and_anything_else_in_base64(box, tmp_path, answer, field):
    box.job("j")
    p = box.bash(jobscripts.submit_script(box.run_dir, [("j", fake_submit(tmp_path / "l", stdout=answer))]))
    (record,) = records(p.stdout)
    assert record.fields[2] == (field or enc(answer))
    expected = answer if field is None else answer.rstrip("\n") + "\n"
    assert jobscripts.command_output(record, 1) == CommandOutput(expected, "", 0)


@pytest.mark.parametrize("rc", [2, 127, 255])
def test_submit_records_any_non_zero_exit(box, tmp_path, rc):
    box.job("j")
    p = box.bash(jobscripts.submit_script(box.run_dir, [("j", fake_submit(tmp_path / "l", rc=rc))]))
    assert records(p.stdout) == [Record("submit", ("j", str(rc), "", ""))]
    p = box.bash(jobscripts.submit_script(box.run_dir, [("j", ["no-such-sbatch", "x"])]))
    (record,) = records(p.stdout)
    assert record.fields[:2] == ("j", "127") and "no-such-sbatch" in unb64(record.fields[3])


def test_a_submit_that_died_midway_is_reported_unsure_and_not_repeated(box, tmp_path):
    log = tmp_path / "submits.log"
    quiet, ran, after = box.job("quiet"), box.job("ran"), box.job("after")
    for d in (quiet, ran):
        (d / "submit.intent").write_text("")
    (ran / "started").write_text("1700000000\n")
    (quiet / "submit.rc").write_text("")          # empty: the echo never happened
    jobs = [(n, fake_submit(log, stdout="9\n")) for n in ("quiet", "ran", "after")]
    p = box.bash(jobscripts.submit_script(box.run_dir, jobs))
    assert p.returncode == 0
    assert records(p.stdout) == [Record("unsure", ("quiet", "-")), Record("unsure", ("ran", "ran")),
                                 Record("submit", ("after", "0", "=9", ""))]
    assert log.read_text().splitlines() == [f"{after} intent ||"]      # only the sure one


def test_recovery_adopts_found_jobs_and_frees_the_others(box, tmp_path):
    log = tmp_path / "submits.log"
    found, gone = box.job("found"), box.job("gone")
    for d in (found, gone):
        (d / "submit.intent").write_text("")
    (found / "submit.err").write_text("stale")
    p = box.bash(jobscripts.recovery_script(box.run_dir, {"found": "12.head 'x' $y"}, ["gone"]))
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    assert (found / "submit.out").read_text() == "12.head 'x' $y\n"
    assert (found / "submit.err").read_text() == "" and (found / "submit.rc").read_text() == "0\n"
    assert not (gone / "submit.intent").exists() and not (gone / "submit.rc").exists()
    # what the next submit script then does: the adopted job as submitted, the other submitted
    jobs = [(n, fake_submit(log, stdout="13\n")) for n in ("found", "gone")]
    p = box.bash(jobscripts.submit_script(box.run_dir, jobs))
    assert records(p.stdout) == [Record("submit", ("found", "0", enc("12.head 'x' $y\n"), "")),
                                 Record("submit", ("gone", "0", "=13", ""))]
    assert log.read_text().splitlines() == [f"{gone} intent ||"]
    # nothing to record, or a job whose intent is already gone: fine
    assert box.bash(jobscripts.recovery_script(box.run_dir, {}, ["gone", "gone"])).returncode == 0


# ------------------------------------------------------------------------------ watching
def test_inspect_reports_each_jobs_files_then_one_status(box, tmp_path):
    done, running, queued = box.job("done"), box.job("running"), box.job("queued")
    (done / "started").write_text("100\n")
    (done / "result").write_text("3 0 200\n")
    (running / "started").write_text("150\n")
    box.command("squeue", 'printf "%s|" "$@"; echo; echo "complaint" >&2; exit 1\n')
    p = box.bash(jobscripts.inspect_script(box.run_dir, ["done", "running", "queued"],
                                           ["squeue", "--jobs=1,2", *AWKWARD]))
    assert (p.returncode, p.stderr) == (0, "")
    assert records(p.stdout) == [
        Record("started", ("done", "100")), Record("result", ("done", "3", "0", "200")),
        Record("started", ("running", "150")),
        Record("status", ("1", enc("|".join(["--jobs=1,2", *AWKWARD]) + "|\n"), enc("complaint\n")))]
    assert list(box.tmp.iterdir()) == []          # its scratch folder removed


def test_inspect_without_a_status_command_only_reads_files(box):
    (box.job("a") / "result").write_text("")
    for argv in (None, []):
        p = box.bash(jobscripts.inspect_script(box.run_dir, ["a"], argv))
        assert (p.returncode, records(p.stdout)) == (0, [Record("result", ("a", ""))])
    p = box.bash(jobscripts.inspect_script(box.run_dir, [], ["sh", "-c", "echo 7"]))
    assert records(p.stdout) == [Record("status", ("0", enc("7\n"), ""))]


def test_inspect_shows_a_written_over_result_on_one_line_and_no_other_folder(box, tmp_path):
    (box.job("a") / "result").write_text("oops $(rm -rf /) @@status 0\nsecond line\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "result").write_text("0 0 1\n")          # not this run's: never read
    p = box.bash(jobscripts.inspect_script(box.run_dir, ["a", "b"], None))
    assert records(p.stdout) == [Record("result", ("a", *"???? ???? ??? ?? ???????? 0".split()))]
    p = box.bash(jobscripts.inspect_script(str(tmp_path / "gone"), ["b"], None))
    assert records(p.stdout) == []                      # a run folder gone: nothing, not b's


def test_inspect_of_a_thousand_jobs_starts_no_process_per_job(box):
    names = [f"j{i}" for i in range(1000)]
    for name in names[:500]:
        (box.job(name) / "started").write_text("100\n")
    box.command("awk", "echo called >> \"$HOME/calls\"; exec /usr/bin/awk \"$@\"\n")
    for tool in ("cat", "base64", "head"):
        box.command(tool, f"echo {tool} >> \"$HOME/calls\"; exit 1\n")
    p = box.bash(jobscripts.inspect_script(box.run_dir, names, None))
    assert len(records(p.stdout, "started")) == 500
    assert not (box.home / "calls").exists()


def test_watch_returns_when_a_result_appears_and_not_before(box):
    import threading
    import time as clock

    box.job("a"), box.job("b"), box.job("arr")
    (Path(jobscripts.job_dir(box.run_dir, "arr")) / "1").mkdir()
    (Path(jobscripts.job_dir(box.run_dir, "arr")) / "1" / "result").write_text("0 0 1\n")
    quiet = box.bash(jobscripts.watch_script(box.run_dir, ["a", "b"], {"arr": 1}, 1, 0.1))
    assert records(quiet.stdout) == [Record("watch", ("quiet",))]
    # a task result beyond the count given is an end, as is a job's result file
    (Path(jobscripts.job_dir(box.run_dir, "arr")) / "2").mkdir()
    (Path(jobscripts.job_dir(box.run_dir, "arr")) / "2" / "result").write_text("0 0 1\n")
    assert records(box.bash(jobscripts.watch_script(box.run_dir, [], {"arr": 1}, 5, 0.1)).stdout) == \
        [Record("watch", ("changed",))]
    def wrapper_ends_b():   # as a wrapper does: its result, then its marker
        (Path(jobscripts.job_dir(box.run_dir, "b")) / "result").write_text("0 0 1\n")
        (Path(jobscripts.events_dir(box.run_dir)) / "b.1.ended").write_text("")
    writer = threading.Timer(0.5, wrapper_ends_b)
    began = clock.monotonic()
    writer.start()
    p = box.bash(jobscripts.watch_script(box.run_dir, ["a", "b"], {"arr": 2}, 30, 0.1))
    assert records(p.stdout) == [Record("watch", ("changed",))]
    # seen at the next tick after its marker, long before the next full look or the window's end
    assert clock.monotonic() - began < jobscripts.WATCH_FULL_LOOK_SECONDS
    # a start file of a job still pending is a change too (of a running one: no)
    (Path(jobscripts.job_dir(box.run_dir, "a")) / "started").write_text("1\n")
    assert records(box.bash(jobscripts.watch_script(box.run_dir, [], {}, 1, 0.1, pending=["b"])).stdout) == \
        [Record("watch", ("quiet",))]
    assert records(box.bash(jobscripts.watch_script(box.run_dir, [], {}, 5, 0.1, pending=["a"])).stdout) == \
        [Record("watch", ("changed",))]
    shutil.rmtree(box.run_dir)
    assert records(box.bash(jobscripts.watch_script(box.run_dir, ["a"], {}, 5, 0.1)).stdout) == \
        [Record("watch", ("gone",))]


def test_a_watching_tick_tests_one_folder_not_each_job(box):
    """However many jobs are in flight, a quiet tick is one test of the events folder; the
    jobs' files are looked at when a marker is new, and every WATCH_FULL_LOOK_SECONDS."""
    names = [f"j{i}" for i in range(200)]
    for name in names:
        box.job(name)
    script = jobscripts.watch_script(box.run_dir, names, {}, 2, 0.1)
    p = box.bash("set -x\n" + script)
    assert records(p.stdout) == [Record("watch", ("quiet",))]
    looks = p.stderr.count("'[' -e j199/result ']'")
    ticks = p.stderr.count("sleep 0.1")
    # the first look and the last; one more when the folder shared the reference's clock tick
    assert ticks >= 10 and looks in (2, 3), (ticks, looks)

    # a marker makes the next tick look, and only that one
    def marker_and_nothing_else():
        (Path(jobscripts.events_dir(box.run_dir)) / "other.1.ended").write_text("")
    import threading
    threading.Timer(0.7, marker_and_nothing_else).start()
    p = box.bash("set -x\n" + script)
    assert records(p.stdout) == [Record("watch", ("quiet",))]
    assert 3 <= p.stderr.count("'[' -e j199/result ']'") <= 5   # + the marker's (twice when it shares a clock tick)


def test_a_result_without_its_marker_is_seen_by_the_full_look(box):
    box.job("a")
    import threading
    threading.Timer(0.5, lambda: (Path(jobscripts.job_dir(box.run_dir, "a")) / "result").write_text("0 0 1\n")).start()
    script = jobscripts.watch_script(box.run_dir, ["a"], {}, jobscripts.WATCH_FULL_LOOK_SECONDS + 5, 0.1)
    p = box.bash("set -x\n" + script)
    assert records(p.stdout) == [Record("watch", ("changed",))]
    # the first look (and its clock tick's), then the full look that saw it
    assert p.stderr.count("'[' -e a/result ']'") in (2, 3)


def test_a_wrapper_leaves_a_marker_for_each_start_and_end_of_each_attempt(box):
    for attempt in (1, 2):
        box.job("a").joinpath("src").mkdir(exist_ok=True)
        (box.job("a") / "src" / "run.sh").write_text("exit 3\n")
        Path(jobscripts.events_dir(box.run_dir)).mkdir(exist_ok=True)
        wrapper = jobscripts.wrapper_script(run_dir=box.run_dir, name="a", handler="run.sh", env={}, attempt=attempt)
        box.bash(wrapper)
    assert sorted(p.name for p in Path(jobscripts.events_dir(box.run_dir)).iterdir()) == [
        "a.1.ended", "a.1.started", "a.2.ended", "a.2.started"]
    # an array's tasks: the job's first start, each task's end
    box.job("arr").joinpath("src").mkdir()
    (box.job("arr") / "src" / "run.sh").write_text("true\n")
    wrapper = jobscripts.wrapper_script(run_dir=box.run_dir, name="arr", handler="run.sh", env={}, array=True)
    for task in ("1", "2"):
        subprocess.run(["bash", "-s"], input=wrapper, text=True, env={**box.env, "SLURM_ARRAY_TASK_ID": task}, check=True)
    assert sorted(p.name for p in Path(jobscripts.events_dir(box.run_dir)).glob("arr.*")) == [
        "arr.1.1.ended", "arr.1.2.ended", "arr.1.started"]
    # no events folder (a run folder made by an older release): the job runs and records as before
    shutil.rmtree(jobscripts.events_dir(box.run_dir))
    p = box.bash(jobscripts.wrapper_script(run_dir=box.run_dir, name="a", handler="run.sh", env={}, attempt=3))
    assert p.returncode == 3 and p.stderr == "" and (box.job("a") / "result").read_text().startswith("3 0 ")


def test_commands_run_in_order_each_answer_labelled(box):
    box.command("echoargs", 'printf "%s|" "$@"; echo; exit 0\n')
    cmds = [("first", ["echoargs", *AWKWARD]),
            ("fails$x", ["sh", "-c", "echo out; echo err >&2; exit 7"]),
            ("missing", ["not-a-command-here"]),
            ("last", ["sh", "-c", "printf 'no newline'"])]
    p = box.bash(jobscripts.commands_script(cmds))
    assert (p.returncode, p.stderr) == (0, "")
    got = records(p.stdout)
    assert [r.tag for r in got] == ["cmd"] * 4
    assert [r.fields[:2] for r in got] == [("first", "0"), ("fails$x", "7"), ("missing", "127"), ("last", "0")]
    assert unb64(got[0].fields[2]) == "|".join(AWKWARD) + "|\n" and got[0].fields[3] == ""
    assert (unb64(got[1].fields[2]), unb64(got[1].fields[3])) == ("out\n", "err\n")
    assert got[2].fields[2] == "" and "not-a-command-here" in unb64(got[2].fields[3])
    assert got[3].fields[2:] == (enc("no newline"), "")
    # what the service makes of them
    assert jobscripts.command_output(got[1], 1) == CommandOutput("out\n", "err\n", 7)
    assert jobscripts.command_output(got[3], 1) == CommandOutput("no newline", "", 0)
    assert list(box.tmp.iterdir()) == []
    assert box.bash(jobscripts.commands_script([])).stdout == ""


def test_tails_are_the_last_bytes_of_each_stderr(box):
    a, b = box.job("a"), box.job("b")
    (a / "stderr").write_text("x" * 50 + "the end\n")
    (b / "stderr").write_text("short\n")
    p = box.bash(jobscripts.tails_script(box.run_dir, ["a", "b", "none"], 8))
    assert (p.returncode, p.stderr) == (0, "")
    assert records(p.stdout) == [Record("tail", ("a", enc("the end\n"))), Record("tail", ("b", enc("short\n"))),
                                 Record("tail", ("none", ""))]
    p = box.bash(jobscripts.tails_script(box.run_dir, ["b"], 3))
    assert records(p.stdout) == [Record("tail", ("b", enc("rt\n")))]
    assert box.bash(jobscripts.tails_script(box.run_dir, [], 3)).stdout == ""


def test_submitted_jobs_are_the_ones_without_a_result(box):
    def job(name, rc=None, out="", intent=False, result=False):
        d = box.job(name)
        if rc is not None:
            (d / "submit.rc").write_text(rc)
            (d / "submit.out").write_text(out)
        if intent:
            (d / "submit.intent").write_text("")
        if result:
            (d / "result").write_text("0 0 1\n")
    job("left", "0\n", "11\n", intent=True)
    job("left-no-intent", "0\n", "12;c\n")
    job("ended", "0\n", "13\n", result=True)
    job("refused", "1\n", "", intent=True)
    job("unsure", intent=True)
    job("unsure-empty-rc", "", intent=True)
    job("never-submitted")
    (Path(box.run_dir) / "jobs" / "a-file").write_text("not a job")
    p = box.bash(jobscripts.submitted_jobs_script(box.run_dir))
    assert (p.returncode, p.stderr) == (0, "")
    assert sorted(records(p.stdout), key=lambda r: r.fields) == [
        Record("left", ("left", enc("11\n"))), Record("left", ("left-no-intent", enc("12;c\n"))),
        Record("unsure", ("unsure",)), Record("unsure", ("unsure-empty-rc",))]


def test_submitted_jobs_of_a_run_that_has_none(box, tmp_path):
    p = box.bash(jobscripts.submitted_jobs_script(str(tmp_path / "no such run")))
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    (Path(box.run_dir) / "jobs").mkdir(parents=True)
    p = box.bash(jobscripts.submitted_jobs_script(box.run_dir))
    assert (p.returncode, p.stdout) == (0, "")


# ------------------------------------------------------------------------------ results
def test_results_stream_a_tar_of_what_exists(box):
    a, b = box.job("a"), box.job("b")
    (a / "stdout").write_text("out a")
    (a / "stderr").write_text("err a")
    (a / "result").write_text("0 0 1\n")
    (a / "output" / "sub dir").mkdir(parents=True)
    (a / "output" / "sub dir" / "it's.txt").write_text("data")
    (a / "src").mkdir()
    (a / "src" / "main.sh").write_text("not collected")
    (a / "run.sh").write_text("not collected")
    (b / "stderr").write_text("err b")
    box.job("c")
    p = box.bash(jobscripts.results_script(box.run_dir, ["a", "b", "c", "missing"]), binary=True)
    assert (p.returncode, p.stderr) == (0, b"")
    with tarfile.open(fileobj=io.BytesIO(p.stdout), mode="r:gz") as tar:
        names = sorted(tar.getnames())
        assert names == ["a/output", "a/output/sub dir", "a/output/sub dir/it's.txt", "a/result",
                         "a/stderr", "a/stdout", "b/stderr"]
        assert tar.extractfile("a/output/sub dir/it's.txt").read() == b"data"
        assert tar.extractfile("b/stderr").read() == b"err b"
    assert (Path(box.run_dir) / "collect.err").read_text() == ""
    # a login environment that happens to define `files` changes nothing
    box.env["files"] = "a/src/main.sh"
    again = box.bash(jobscripts.results_script(box.run_dir, ["b"]), binary=True)
    with tarfile.open(fileobj=io.BytesIO(again.stdout), mode="r:gz") as tar:
        assert tar.getnames() == ["b/stderr"]


def test_results_of_nothing_is_no_output_and_a_missing_run_fails(box, tmp_path):
    box.job("a")
    p = box.bash(jobscripts.results_script(box.run_dir, ["a"]), binary=True)
    assert (p.returncode, p.stdout) == (0, b"")
    p = box.bash(jobscripts.results_script(box.run_dir, []), binary=True)
    assert (p.returncode, p.stdout) == (0, b"")
    p = box.bash(jobscripts.results_script(str(tmp_path / "gone"), ["a"]), binary=True)
    assert p.returncode == 3 and p.stdout == b""


def test_results_tar_complaints_go_beside_the_run(box):
    a = box.job("a")
    (a / "stdout").write_text("x")
    box.command("tar", 'printf "%s|" "$@" > "$HOME/tar-argv"; echo "tar: something broke" >&2; exit 2\n')
    p = box.bash(jobscripts.results_script(box.run_dir, ["a"]), binary=True)
    assert (p.returncode, p.stdout, p.stderr) == (2, b"", b"")       # stderr is not read while streaming
    assert (Path(box.run_dir) / "collect.err").read_text() == "tar: something broke\n"
    assert (box.home / "tar-argv").read_text() == "-czf|-|--|a/stdout|"


# ------------------------------------------------------------------------------ how a handler runs
def test_wrapper_executes_a_compiled_program(box):
    """An ELF binary is executed (bash on it failed with 126 "cannot execute binary file")."""
    import shutil

    d, _ = wrapper(box, handler="prog", body=None)
    shutil.copy(shutil.which("true"), d / "src" / "prog")
    (d / "src" / "prog").chmod(0o644)                    # as staged: not executable
    assert run_wrapper(box, d).returncode == 0
    assert result_of(d)[:2] == (0, 0) and (d / "stderr").read_text() == ""


@pytest.mark.parametrize("body, says", [
    ("\ufeff#!/bin/bash\necho hi\n", "starts with a UTF-8 byte order mark: save it without one"),
    ("#!/bin/bash\r\necho hi\r\n", "has Windows line endings (CRLF): convert it, e.g. sed -i 's/\\r$//' main.sh"),
    ("echo hi\r\n", "has Windows line endings (CRLF)"),
])
def test_wrapper_names_a_first_line_the_kernel_would_misread(box, body, says):
    d, _ = wrapper(box, body=None)
    (d / "src" / "main.sh").write_bytes(body.encode())
    assert run_wrapper(box, d).returncode == 126
    assert result_of(d)[:2] == (126, 0)
    assert says in (d / "stderr").read_text() and (d / "stdout").read_text() == ""


def test_a_carriage_return_later_in_the_file_is_the_handlers_business(box):
    d, _ = wrapper(box, body="#!/bin/bash\necho 'a\rb' | od -c | head -1 > /dev/null; echo fine\n")
    assert run_wrapper(box, d).returncode == 0 and (d / "stdout").read_text() == "fine\n"


def test_run_jobs_lists_every_submitted_job_with_its_answer_and_result(box):
    root = box.job("done").parent
    (root / "done" / "submit.rc").write_text("0\n")
    (root / "done" / "submit.out").write_text("41\n")
    (root / "done" / "result").write_text("0 0 1700000000\n")
    box.job("running")
    (root / "running" / "submit.rc").write_text("0\n")
    (root / "running" / "submit.out").write_text("42\n")
    box.job("unsure")
    (root / "unsure" / "submit.intent").write_text("")
    box.job("never")                                     # staged, never submitted
    p = box.bash(jobscripts.run_jobs_script(box.run_dir))
    assert p.returncode == 0
    found = {r.fields[0]: (r.fields[1], unb64(r.fields[2]), unb64(r.fields[3])) for r in records(p.stdout)}
    assert found == {"done": ("0", "41\n", "0 0 1700000000\n"), "running": ("0", "42\n", ""),
                     "unsure": ("", "", "")}
    assert box.bash(jobscripts.run_jobs_script(box.run_dir + "/none")).stdout == ""


# ------------------------------------------------------------------------------ retries
def test_the_next_attempt_finds_its_folder_as_the_first_did_the_last_attempt_kept_beside(box):
    d = box.job("a")
    for name in ("stdout", "stderr", "result", "started", "submit.intent", "submit.rc", "submit.out", "submit.err"):
        (d / name).write_text(f"{name} of attempt 1\n")
    (d / "output").mkdir()
    (d / "output" / "x.dat").write_text("data\n")
    (d / "3").mkdir()                                    # an array task's folder
    (d / "3" / "stdout").write_text("task 3\n")
    for keep in ("src", "run.sh"):
        (d / keep).mkdir() if keep == "src" else (d / keep).write_text("#!/bin/bash\n")
    script = jobscripts.next_attempt_script(box.run_dir, {"a": 2})
    p = box.bash(script)
    assert (p.returncode, p.stderr) == (0, "")
    assert sorted(x.name for x in d.iterdir()) == ["attempt-1", "run.sh", "src"]
    kept = d / "attempt-1"
    assert (kept / "stdout").read_text() == "stdout of attempt 1\n" and (kept / "output" / "x.dat").exists()
    assert (kept / "3" / "stdout").read_text() == "task 3\n" and (kept / "submit.rc").exists()
    # a retried call (the files now are attempt 2's): nothing moves again
    (d / "stdout").write_text("attempt 2\n")
    assert box.bash(script).returncode == 0
    assert (d / "stdout").read_text() == "attempt 2\n" and (kept / "stdout").read_text() == "stdout of attempt 1\n"


def test_a_move_that_died_midway_is_finished_by_the_next_call(box):
    d = box.job("a")
    (d / "attempt-2.part").mkdir()
    (d / "attempt-2.part" / "stdout").write_text("moved already\n")
    (d / "stderr").write_text("not yet\n")
    assert box.bash(jobscripts.next_attempt_script(box.run_dir, {"a": 3})).returncode == 0
    assert sorted(x.name for x in (d / "attempt-2").iterdir()) == ["stderr", "stdout"]
    assert not (d / "attempt-2.part").exists() and not (d / "stderr").exists()


def test_results_stream_the_earlier_attempts_too(box):
    d = box.job("a")
    (d / "stdout").write_text("2\n")
    (d / "attempt-1").mkdir()
    (d / "attempt-1" / "stdout").write_text("1\n")
    (d / "attempt-1" / "result").write_text("137 9 1\n")
    (d / "attempt-1" / "4").mkdir()
    (d / "attempt-1" / "4" / "stderr").write_text("task\n")
    p = box.bash(jobscripts.results_script(box.run_dir, ["a"]), binary=True)
    with tarfile.open(fileobj=io.BytesIO(p.stdout), mode="r:gz") as tar:
        names = sorted(tar.getnames())
    assert names == ["a/attempt-1/4/stderr", "a/attempt-1/result", "a/attempt-1/stdout", "a/stdout"]
