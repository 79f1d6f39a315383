"""The run's folder on the head node, and the bash that works in it.

Layout of one run (RUN = <remote root>/<execution name>):

    RUN/jobs/NAME/src/         the staged files; the handler is a path inside
    RUN/jobs/NAME/output/      $STEPCLUSTER_OUTPUT, for the job's results
    RUN/jobs/NAME/stdout       the handler's stdout and stderr
    RUN/jobs/NAME/stderr
    RUN/jobs/NAME/run.sh       the wrapper submitted to the scheduler
    RUN/jobs/NAME/submit.*     the submit command's rc, stdout, stderr (makes submit idempotent);
                               submit.intent, written before it runs (a retry then asks the
                               scheduler by the job's name, see submission_name)
    RUN/jobs/NAME/started      epoch seconds, written when the wrapper starts
    RUN/jobs/NAME/result       "EXIT SIGNAL ENDED_EPOCH", written atomically when it ends

The result file is the truth about a job's end: schedulers forget finished jobs (Slurm after
MinJobAge, SGE between qstat and qacct, Torque after keep_completed), the file does not.

Every value placed in a script goes through shlex.quote; job names are also restricted to
[A-Za-z0-9_-] by the config, so they are safe as path components.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from stepcluster.schedulers.base import CommandOutput

q = shlex.quote


def bash_array(variable: str, words: Iterable[str]) -> str:
    """`VARIABLE=(WORD ...)`, each word as given (quote it first, or leave a glob to expand).

    A loop over a job list goes over such an array (`for n in "${VARIABLE[@]}"`), never over
    the words themselves: bash takes time quadratic in the length of a literal `for` list
    (2.4 s for 10,000 names on this project's rig, against 0.08 s for the array and its loop)."""
    return f"{variable}=({' '.join(words)})"


def job_dir(run_dir: str, name: str) -> str:
    return f"{run_dir}/jobs/{name}"


def events_dir(run_dir: str) -> str:
    """Where each wrapper leaves an empty marker when its job (or array task) starts or ends:
    a new entry changes the folder's time, which a watching round tests once a tick, however
    many jobs are in flight (`watch_script`)."""
    return f"{run_dir}/events"


def prepare_run_script(scheduler: str, probe_argv: Sequence[str], remote_root: str,
                       execution: str) -> str:
    """Check the scheduler answers; make RUN (remote_root relative to $HOME unless absolute).

    Prints `@@run_dir PATH`; exits 3 with the scheduler's complaint when it does not answer.
    """
    return (f"if ! out=$({shlex.join(probe_argv)} 2>&1); then\n"
            f"  echo {q(scheduler + ' does not answer on this head node:')} >&2\n"
            "  printf '%s\\n' \"$out\" | tail -5 >&2; exit 3\n"
            "fi\n"
            f"root={q(remote_root)}; case $root in /*) ;; *) root=\"$HOME/$root\";; esac\n"
            f"run=\"$root\"/{q(execution)}\n"
            "mkdir -p \"$run/jobs\" \"$run/events\" && printf '@@run_dir %s\\n' \"$run\"\n")


#: What a job's attempt leaves in its folder (beside src/ and run.sh, which the next attempt
#: has again): moved to attempt-K/ before the next attempt is submitted.
ATTEMPT_FILES = ("stdout", "stderr", "result", "started", "output", "submit.intent", "submit.rc",
                 "submit.out", "submit.err")


def next_attempt_script(run_dir: str, attempts: Mapping[str, int]) -> str:
    """Before each job's attempt N (of `attempts`) is submitted: move what attempt N-1 left in
    its folder (its files, an array's task folders) to attempt-(N-1)/. Once only: a retried
    call finds attempt-(N-1)/ there and moves nothing (the files then are attempt N's); a
    call that died midway finishes the move it began (attempt-(N-1).part/)."""
    lines = ["set -u"]
    files = " ".join(ATTEMPT_FILES)
    for name, attempt in attempts.items():
        d, done = q(job_dir(run_dir, name)), q(f"attempt-{int(attempt) - 1}")
        lines.append(
            f'd={d}; a=$d/{done}; if [ ! -d "$a" ]; then mkdir -p "$a.part" || exit 1; '
            f'for f in {files}; do [ -e "$d/$f" ] && mv -- "$d/$f" "$a.part/"; done; '
            'for t in "$d"/[0-9]*; do [ -e "$t" ] && mv -- "$t" "$a.part/"; done; '
            'mv -- "$a.part" "$a" || exit 1; fi')
    return "\n".join(lines) + "\n"


def find_run_script(remote_root: str, execution: str) -> str:
    """Print `@@run_dir PATH` if the execution's run folder exists (nothing otherwise)."""
    return (f"root={q(remote_root)}; case $root in /*) ;; *) root=\"$HOME/$root\";; esac\n"
            f"run=\"$root\"/{q(execution)}\n"
            "if [ -d \"$run\" ]; then printf '@@run_dir %s\\n' \"$run\"; fi\n")


def wrapper_script(*, run_dir: str, name: str, handler: str, env: Mapping[str, str],
                   directives: Sequence[str] = (), array: bool = False, attempt: int = 1) -> str:
    """The batch script for one job: runs the handler, records exit code and signal.

    `directives` are the handler's own directive lines (`#SBATCH ...`), placed before the
    wrapper's first command, where the scheduler reads them as it would in the handler.
    `array`: each task keeps its own record in RUN/jobs/NAME/TASK/ (started, result, stdout,
    stderr, output/), its index in $STEPCLUSTER_TASK_ID; the job's `started` is its first task's.
    After its start file and after its result, it leaves a marker in `events_dir` named by the
    job, the `attempt` (and the task): each is a new entry, so each changes the folder's time.
    """
    d = job_dir(run_dir, name)
    exports = "\n".join(f"export {key}={q(value)}" for key, value in sorted(env.items()))
    carried = "".join(f"{line}\n" for line in directives)
    if carried:
        carried = f"# the handler's directives, as it wrote them:\n{carried}"
    return f"""#!/bin/bash
# stepcluster job wrapper for job {name}: runs the handler in its staged folder and records
# its exit code in a file, where no scheduler can forget it.
{carried}JOB_DIR={q(d)}
{exports}
export STEPCLUSTER_JOB_DIR="$JOB_DIR" STEPCLUSTER_SOURCE="$JOB_DIR/src"
# a marker for a watching round (no process: a builtin; a marker that cannot be made is seen
# by the round's slower look at every job's files)
mark() {{ {{ : > {q(events_dir(run_dir))}/"$1"; }} 2>/dev/null; }}
MARK={q(f"{name}.{int(attempt)}")}
{_TASK_RECORD if array else 'REC_DIR=$JOB_DIR'}
export STEPCLUSTER_OUTPUT="$REC_DIR/output"
mkdir -p -- "$STEPCLUSTER_OUTPUT"
date +%s > "$REC_DIR/started"{'' if array else '; mark "$MARK.started"'}
record() {{ printf '%s %s %s\\n' "$1" "$2" "$(date +%s)" > "$REC_DIR/result.tmp" && mv -f -- "$REC_DIR/result.tmp" "$REC_DIR/result"; mark "$MARK{'.$task' if array else ''}.ended"; }}
cd "$STEPCLUSTER_SOURCE" || {{ echo "stepcluster: cannot enter $STEPCLUSTER_SOURCE" >&2; record 127 0; exit 127; }}
handler={q(handler)}
# "./": a handler named like an option ("--version", "-x.sh") stays a path for every command
case $handler in /*) path=$handler ;; *) path=./$handler ;; esac
# As the user means it: a program (ELF) or a script with #! is executed, anything else is run
# by bash. A first line the kernel would misread is named, not run: a byte order mark before
# "#!" (the file would run under bash), a carriage return (Windows line endings: the kernel looks
# for an interpreter "bash\\r" and bash chokes on every line).
IFS= read -r first 2>/dev/null < "$path"
if [ ! -f "$path" ]; then
    echo "stepcluster: the handler $handler is not a file in $STEPCLUSTER_SOURCE" >&2; rc=127
elif [ "$(head -c 4 -- "$path")" = $'\\x7fELF' ]; then
    chmod u+x -- "$path" && "$path"; rc=$?
elif [ "${{first:0:3}}" = $'\\xef\\xbb\\xbf' ]; then
    echo "stepcluster: the handler $handler starts with a UTF-8 byte order mark: save it without one" >&2; rc=126
elif [ "${{first: -1}}" = $'\\r' ]; then
    echo "stepcluster: the handler $handler has Windows line endings (CRLF): convert it, e.g. sed -i 's/\\\\r$//' $handler" >&2; rc=126
elif [ "${{first:0:2}}" = '#!' ]; then
    chmod u+x -- "$path" && "$path"; rc=$?
else
    bash -- "$path"; rc=$?
fi
signal=0
if [ "$rc" -gt 128 ] && [ "$rc" -lt 160 ]; then signal=$((rc - 128)); fi
record "$rc" "$signal"
exit "$rc"
"""


#: An array task's record folder, from the scheduler's own task index (sbatch(1)
#: SLURM_ARRAY_TASK_ID, qsub(1) SGE_TASK_ID, Torque PBS_ARRAYID); its streams go there too (the
#: scheduler's -o/-e are one file for the whole array).
_TASK_RECORD = r"""task=${SLURM_ARRAY_TASK_ID:-${SGE_TASK_ID:-${PBS_ARRAYID:-}}}
case $task in ''|*[!0-9]*) echo "stepcluster: an array task without a task index (got '$task')" >&2; exit 127;; esac
[ -e "$JOB_DIR/started" ] || { date +%s > "$JOB_DIR/started"; mark "$MARK.started"; }
REC_DIR=$JOB_DIR/$task
mkdir -p -- "$REC_DIR" && exec > "$REC_DIR/stdout" 2> "$REC_DIR/stderr"
export STEPCLUSTER_TASK_ID=$task"""


def b64(command: str) -> str:
    """Shell snippet printing a file's content as one base64 line (empty if missing)."""
    return f'$(base64 -w0 -- {command} 2>/dev/null)'


def submission_name(execution: str, name: str, attempt: int = 1) -> str:
    """The job's name on the scheduler: its own name and a digest of (execution, job, attempt).

    Deterministic, so that a retried submit finds, by this name, a job that an earlier attempt
    submitted without recording its id; unique to this run, so it finds no other run's job.
    Characters: the job name's [A-Za-z0-9_-] and hex digits, valid for every adapter.
    """
    digest = hashlib.sha256(f"{execution}\0{name}\0{int(attempt)}".encode()).hexdigest()[:12]
    return f"{name}-{digest}"


#: Submissions in flight at once: sbatch takes about 7 ms of the controller's time one after
#: the other and 2 ms each with 8 in flight (measured on the local Slurm), so 1,000 jobs go out
#: in seconds; the scheduler is not flooded.
SUBMIT_CONCURRENCY = 8

#: Bash functions of the submit script. `submit D ARGV...`: in the background, the intent
#: first, then the command (exec'd: one process a job), from D; `recorded D`: its rc, once it
#: ended. `plain F`: P is F's one line as it is (`=LINE`), if it is only such characters as a
#: job id has. `report NAME D`: the record (builtins to read rc and a plain job id; base64
#: only for anything else that is there), false when the scheduler refused. `unsure D`: an
#: intent without an rc.
_SUBMIT_FUNCTIONS = r"""unsure() { [ -e "$1/submit.intent" ] && [ ! -s "$1/submit.rc" ]; }
accepted() { local v=; [ -e "$1/submit.rc" ] && read -r v < "$1/submit.rc"; [ "$v" = 0 ]; }
pids=() dirs=()
submit() {
  local d=$1; shift
  ( cd -- "$d" && : > submit.intent && exec "$@" > submit.out 2> submit.err ) & pids+=($!) dirs+=("$d")
}
recorded() { local i; for i in "${!pids[@]}"; do wait "${pids[$i]}"; echo $? > "${dirs[$i]}/submit.rc"; done; pids=() dirs=(); }
plain() {
  P=; IFS= read -r -d '' P < "$1"; P=${P%$'\n'}
  case $P in ''|*[!A-Za-z0-9_.:\;-]*) return 1;; esac; P="=$P"
}
report() {
  local rc= out= err=; read -r rc < "$2/submit.rc"
  [ -s "$2/submit.out" ] && { plain "$2/submit.out" && out=$P || out=$(base64 -w0 -- "$2/submit.out"); }
  [ -s "$2/submit.err" ] && err=$(base64 -w0 -- "$2/submit.err")
  printf '@@submit %s %s %s %s\n' "$1" "$rc" "$out" "$err"; [ "$rc" = 0 ]
}"""


def submit_script(run_dir: str, submissions: Sequence[tuple[str, Sequence[str]]],
                  concurrency: int = SUBMIT_CONCURRENCY, stop_at_refusal: bool = True) -> str:
    """Submit jobs, `concurrency` at a time, in order; after a batch with a refusal, no more
    (unless not `stop_at_refusal`: [order] on_failure = finish, each job on its own).

    Each job prints `@@submit NAME RC B64(stdout) B64(stderr)`. A job whose submit.rc is
    already 0 (an earlier attempt got through) is not submitted again: its recorded output is
    printed instead, so a retried Lambda never submits a job twice.

    submit.intent is written before the submit command runs. A job with an intent and no
    submit.rc was being submitted when an earlier attempt died: the scheduler may or may not
    have it. Such a job is not submitted but reported as `@@unsure NAME ran|-` ("ran": its
    wrapper has started, so it was submitted), for the caller to ask the scheduler by the job's
    name (`recovery_script` then records what it found).
    """
    lines = ["set -u", _SUBMIT_FUNCTIONS, "refused=0"]
    for first in range(0, len(submissions), max(1, concurrency)):
        batch = submissions[first:first + max(1, concurrency)]
        for name, argv in batch:
            d = q(job_dir(run_dir, name))
            lines.append(f"unsure {d} || accepted {d} || submit {d} {shlex.join(argv)}")
        lines.append("recorded")
        for name, _ in batch:
            d = q(job_dir(run_dir, name))
            lines.append(f"if unsure {d}; then printf '@@unsure %s %s\\n' {q(name)} "
                         f"\"$([ -e {d}/started ] && echo ran || echo -)\"; "
                         f"else report {q(name)} {d} || refused=1; fi")
        if stop_at_refusal:
            lines.append('[ "$refused" = 0 ] || exit 0')
    return "\n".join(lines) + "\n"


def recovery_script(run_dir: str, adopted: Mapping[str, str], not_submitted: Iterable[str]) -> str:
    """Record what the scheduler said about `@@unsure` jobs.

    A job it knows is adopted (its id written as submit.out, then submit.rc 0: what a
    successful submit leaves); a job it verifiably does not know loses its intent, so the next
    submit script submits it.
    """
    lines = ["set -u"]
    for name, job_id in adopted.items():
        d = q(job_dir(run_dir, name))
        lines.append(f"printf '%s\\n' {q(job_id)} > {d}/submit.out && : > {d}/submit.err && echo 0 > {d}/submit.rc")
    for name in not_submitted:
        lines.append(f"rm -f -- {q(job_dir(run_dir, name))}/submit.intent")
    return "\n".join(lines) + "\n"


def inspect_script(run_dir: str, names: Iterable[str], status_argv: Sequence[str] | None,
                   arrays: Iterable[str] = ()) -> str:
    """One round's look at jobs: their files, then one scheduler status command for all.

    Prints `@@started NAME EPOCH` and `@@result NAME EXIT SIGNAL ENDED` for each job whose
    wrapper wrote them (first line, as written: the caller checks it), then
    `@@status RC B64(stdout) B64(stderr)` when a status command is given. For each job of
    `arrays`, also `@@tasks NAME STARTED ENDED FAILED LAST_ENDED TASK RC SIGNAL ENDED`: how many
    tasks started, ended and failed, when the last one ended, and the failed task with the
    lowest index ("-" fields when none): counts, whatever the array's size.

    The per-job part uses only bash builtins (`[ -e ]`, `read`): a round over 1,000 jobs
    starts no process per job.
    """
    names = list(names)
    arrays = set(arrays)
    arrays = [n for n in names if n in arrays]
    lines = ["set -u"]
    if names:
        # a file's first line, as written (an empty file too: it is present), its characters
        # other than digits and spaces shown as "?" so that a record stays one line
        each = ("for f in started result; do [ -e \"$n/$f\" ] || continue; v=; IFS= read -r v < \"$n/$f\"; "
                "printf '@@%s %s %s\\n' \"$f\" \"$n\" \"${v//[!0-9 ]/?}\"; done")
        lines.append(bash_array("names", map(q, names)))
        lines.append(f"if cd {q(run_dir + '/jobs')} 2>/dev/null; then for n in \"${{names[@]}}\"; do {each}; done")
        for name in arrays:
            lines.append(f"  set -- {q(name)}/[0-9]*/started; [ -e \"$1\" ] && n=$# || n=0; "
                         f"printf '@@tasks %s %s %s\\n' {q(name)} \"$n\" \"$(awk {q(_TALLY)} "
                         f"{q(name)}/[0-9]*/result 2>/dev/null || true)\"")
        lines.append("fi")
    if status_argv:
        tmp = '"$tmp"'
        lines.append(f"tmp=$(mktemp -d); {shlex.join(status_argv)} > {tmp}/out 2> {tmp}/err; rc=$?; "
                     f"printf '@@status %s %s %s\\n' \"$rc\" \"{b64(tmp + '/out')}\" \"{b64(tmp + '/err')}\"; "
                     f"rm -rf {tmp}")
    return "\n".join(lines) + "\n"


#: A watching round looks at every job's files at least this often even with no marker new
#: (a wrapper that could not leave one: a full disk, a folder made by an older release).
WATCH_FULL_LOOK_SECONDS = 10


def watch_script(run_dir: str, names: Iterable[str], arrays: Mapping[str, int], seconds: int,
                 tick: float, pending: Iterable[str] = ()) -> str:
    """Wait on the head node, at most `seconds`, for a job to end (a result file of one of
    `names`, or more task results of an array job of `arrays` than the count given) or to
    start (a start file of one of `pending`).

    A tick (every `tick` seconds) is one test, whatever the number of jobs: is the events
    folder (`events_dir`, where the wrappers leave markers) not older than this round's
    reference file? Only then, or every WATCH_FULL_LOOK_SECONDS, does it look at the jobs'
    files, having first renewed the reference, so that a marker made during the look is seen
    at the next tick ("not older": the kernel's clock is coarse, a marker may share the
    reference's time). Bash builtins only, but `sleep`. Prints `@@watch changed` as soon as it
    sees one, `@@watch quiet` when the time is up, and `@@watch gone` when the run's folder is
    (the run was cleaned up meanwhile: an abort).
    """
    names, pending = list(names), list(pending)
    checks = ["for n in \"${names[@]}\"; do [ -e \"$n/result\" ] && return 0; done"] if names else []
    if pending:
        checks.append("for n in \"${pending[@]}\"; do [ -e \"$n/started\" ] && return 0; done")
    checks += [f"set -- {q(name)}/[0-9]*/result; [ -e \"$1\" ] && [ $# -gt {int(count)} ] && return 0"
               for name, count in arrays.items()]
    return "\n".join([
        f"jobs={q(run_dir + '/jobs')}; cd \"$jobs\" 2>/dev/null || {{ echo '@@watch gone'; exit 0; }}",
        f"events={q(events_dir(run_dir))}; [ -d \"$events\" ] || mkdir -p \"$events\"",
        f"ref={q(run_dir)}/.watch-$$; trap 'rm -f \"$ref\"' EXIT",
        bash_array("names", map(q, names)), bash_array("pending", map(q, pending)),
        "changed() { " + "; ".join(checks + ["return 1"]) + "; }",
        f"end=$((SECONDS + {int(seconds)})); full=0",
        "while [ $SECONDS -lt $end ]; do "
        "if ! [ \"$ref\" -nt \"$events\" ] || [ $SECONDS -ge $full ]; then "
        f": > \"$ref\"; full=$((SECONDS + {WATCH_FULL_LOOK_SECONDS})); "
        "changed && { echo '@@watch changed'; exit 0; }; fi; "
        f"[ -d \"$jobs\" ] || {{ echo '@@watch gone'; exit 0; }}; sleep {tick:g}; done",
        "if changed; then echo '@@watch changed'; else echo '@@watch quiet'; fi"]) + "\n"


#: awk over an array's task result files ("EXIT SIGNAL ENDED", one line each, in TASK/result):
#: "ENDED FAILED LAST_ENDED TASK EXIT SIGNAL TASK_ENDED" of the failed task with the lowest index.
_TALLY = ('FNR == 1 { n++; k = FILENAME; sub(/\\/result$/, "", k); sub(/.*\\//, "", k); '
          'if ($3 + 0 > last) last = $3 + 0; '
          'if ($1 != "0") { f++; if (t == "" || k + 0 < t + 0) { t = k; r = $1 " " $2 " " $3 } } } '
          'END { printf "%d %d %s %s %s\\n", n, f, (last ? last : "-"), (t == "" ? "-" : t), (r == "" ? "- - -" : r) }')


def commands_script(commands: Sequence[tuple[str, Sequence[str]]]) -> str:
    """Run labelled commands; print `@@cmd LABEL RC B64(stdout) B64(stderr)` for each."""
    lines = ["set -u", "tmp=$(mktemp -d)"]
    out, err = b64('"$tmp/out"'), b64('"$tmp/err"')
    for label, argv in commands:
        lines.append(f'{shlex.join(argv)} > "$tmp/out" 2> "$tmp/err"; rc=$?; '
                     f"printf '@@cmd %s %s %s %s\\n' {q(label)} \"$rc\" \"{out}\" \"{err}\"")
    lines.append('rm -rf "$tmp"')
    return "\n".join(lines) + "\n"


def directive_lines_script(run_dir: str, handlers: Iterable[tuple[str, str]], *, prefix: str,
                           whole_file: bool, max_bytes: int) -> str:
    """The lines of each staged handler its scheduler reads options from:
    `@@head NAME B64("NR<TAB>line" lines)` (directives.AWK_CANDIDATES), at most `max_bytes`."""
    from stepcluster.directives import AWK_CANDIDATES

    # the path is absolute (no "--": mawk, Debian's awk, takes it for a file name)
    awk = shlex.join(["awk", "-v", f"prefix={prefix}", "-v", f"whole={int(whole_file)}", AWK_CANDIDATES])
    return "\n".join(
        f"printf '@@head %s %s\\n' {q(n)} \"$({awk} {q(job_dir(run_dir, n) + '/src/' + h)} 2>/dev/null "
        f"| head -c {int(max_bytes)} | base64 -w0)\""
        for n, h in handlers) + "\n"


def tails_script(run_dir: str, names: Iterable[str], max_bytes: int,
                 tasks: Mapping[str, str] | None = None) -> str:
    """The last `max_bytes` of each job's stderr (of its task `tasks[name]`, for an array job:
    then the scheduler's own stderr file of the array after it): `@@tail NAME B64(text)`."""
    def files(n):
        own = q(job_dir(run_dir, n) + "/stderr")
        task = (tasks or {}).get(n)
        return f"{q(job_dir(run_dir, n) + '/' + task + '/stderr')} {own}" if task else own
    return "\n".join(
        f"printf '@@tail %s %s\\n' {q(n)} \"$(cat -- {files(n)} 2>/dev/null | tail -c {int(max_bytes)} | base64 -w0)\""
        for n in names) + "\n"


def run_jobs_script(run_dir: str) -> str:
    """Every job the run's folder shows as submitted: `@@jobrec NAME RC B64(submit.out)
    B64(result)` (RC: submit.rc, empty while unsure). For a cleanup that has no run record (an
    aborted execution): what was submitted, with what id, and how it ended."""
    return (f"cd {q(run_dir + '/jobs')} 2>/dev/null || exit 0\n"
            "for d in */; do n=${d%/}; [ -e \"./$n/submit.rc\" ] || [ -e \"./$n/submit.intent\" ] || continue; "
            "printf '@@jobrec %s %s %s %s\\n' \"$n\" \"$(cat -- \"./$n/submit.rc\" 2>/dev/null)\" "
            "\"$(base64 -w0 -- \"./$n/submit.out\" 2>/dev/null)\" \"$(base64 -w0 -- \"./$n/result\" 2>/dev/null)\"; "
            "done\n")


def submitted_jobs_script(run_dir: str) -> str:
    """Every job of the run that was submitted and has no result: `@@left NAME B64(stdout)`.

    Read from the head node, not from the state machine's payload, so that a job submitted by
    an attempt that crashed before reporting back is still found and cancelled. A job whose
    submit died before its id was recorded (an intent, no submit.rc) is `@@unsure NAME`: the
    caller looks it up by its submission name.
    """
    return (f"cd {q(run_dir + '/jobs')} 2>/dev/null || exit 0\n"
            "for d in */; do n=${d%/}; "
            "if [ \"$(cat -- \"./$n/submit.rc\" 2>/dev/null)\" = 0 ] && [ ! -e \"./$n/result\" ]; then "
            "printf '@@left %s %s\\n' \"$n\" \"$(base64 -w0 -- \"./$n/submit.out\")\"; "
            "elif [ -e \"./$n/submit.intent\" ] && [ ! -s \"./$n/submit.rc\" ]; then "
            "printf '@@unsure %s\\n' \"$n\"; fi; done\n")


#: What of a job's folder outlives the cluster: its output streams, exit record, output folder.
RESULT_FILES = ("stdout", "stderr", "result", "output")


def results_script(run_dir: str, names: Iterable[str]) -> str:
    """Stream a tar.gz of every existing NAME/{stdout,stderr,result,output} (and, of an array
    job, NAME/TASK/{...}; of a retried job, NAME/attempt-K/{...}) on stdout.

    Prints nothing when there is nothing to collect. tar's complaints go to a file beside the
    run (stderr is not read while the stream is).
    """
    lines = [f"cd {q(run_dir + '/jobs')} || exit 3", "files=()"]
    names = list(names)
    lines.append(bash_array("wanted", (q(f"{n}/{f}") for n in names for f in RESULT_FILES)))
    lines.append('for f in "${wanted[@]}"; do [ -e "$f" ] && files+=("$f"); done')
    # an array job's tasks: NAME/TASK/{stdout,stderr,result,output} (the glob matches no other),
    # and a retried job's earlier attempts: NAME/attempt-K/{...}, NAME/attempt-K/TASK/{...}
    lines.append(bash_array("tasks", (f"{q(n)}/{where}/{f}" for n in names for f in RESULT_FILES
                                      for where in ("[0-9]*", "attempt-[0-9]*", "attempt-[0-9]*/[0-9]*"))))
    lines.append('for f in "${tasks[@]}"; do [ -e "$f" ] && files+=("$f"); done')
    lines.append('[ ${#files[@]} -gt 0 ] || exit 0')
    lines.append('exec tar -czf - -- "${files[@]}" 2> ../collect.err')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Record:
    tag: str
    fields: tuple[str, ...]


def parse_records(stdout: str) -> list[Record]:
    """The `@@TAG field...` lines of a script's output, base64 fields left as they are."""
    records = []
    for line in stdout.splitlines():
        if line.startswith("@@"):
            tag, *fields = line[2:].split(" ")
            records.append(Record(tag, tuple(fields)))
    return records


def unb64(text: str) -> str:
    """A record's text field: base64, or `=LINE` for a one-line answer of plain characters that
    the script passed as it was (`LINE` and its newline: no base64 process for a job id)."""
    if text and text.startswith("="):
        return text[1:] + "\n"
    return base64.b64decode(text or "").decode(errors="replace")


def command_output(record: Record, first: int) -> CommandOutput:
    """The answer of a command a script ran, from its record: exit code at field `first`, then
    stdout and stderr in base64 (the `@@cmd`, `@@submit` and `@@status` records)."""
    f = record.fields
    return CommandOutput(unb64(f[first + 1]), unb64(f[first + 2]), int(f[first]))
