"""Tests of the jobs config reader (functions/stepcluster/config.py).

The contract is the grammar and the examples of the user's original docs (stepfunctions.rst);
every bad input must come out as a ConfigError naming file, line, section and key, never as a
traceback (the original feature's main defect).
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from stepcluster.config import (
    DEFAULT_WAIT_TIME,
    JobsConfig,
    JobSpec,
    Problem,
    load_jobs_config,
    parse_jobs_config,
)
from stepcluster.errors import ConfigError, StepclusterError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "configs"
PATH = "jobs.ini"


# ---------------------------------------------------------------------------------------------
# helpers


def parse(text: str, base_dir) -> JobsConfig:
    return parse_jobs_config(textwrap.dedent(text), PATH, base_dir)


def errors_of(text: str, base_dir) -> tuple[Problem, ...]:
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir)
    problems = info.value.problems
    assert problems, "a ConfigError must carry at least one problem"
    assert all(isinstance(p, Problem) and p.severity == "error" for p in problems)
    return problems


def only_error(text: str, base_dir) -> Problem:
    problems = errors_of(text, base_dir)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def assert_at(problem: Problem, line, section, key, *fragments):
    assert problem.path == PATH
    assert problem.line == line, str(problem)
    assert problem.section == section, str(problem)
    assert problem.key == key, str(problem)
    rendered = str(problem)
    location = f"{PATH}:{line}:" if line is not None else f"{PATH}:"
    assert rendered.startswith(location), rendered
    if section is not None:
        assert f"[{section}]" in rendered
    if key is not None:
        assert f" {key}: " in rendered
    for fragment in fragments:
        assert fragment in problem.message, rendered


# A valid job section to pad configs with (S3, so no files are needed).
GOOD_ORDER = "[order]\nsequential = a\n\n"
GOOD_JOB_A = "[job a]\nhandler = run.sh\ns3_uri = s3://my-bucket/a/\n"


# ---------------------------------------------------------------------------------------------
# The docs' examples


def test_seed_example_fixture_loads():
    config = load_jobs_config(FIXTURES / "seed-example" / "jobs.ini")
    assert config.order == "sequential"
    assert [j.name for j in config.jobs] == ["job1", "banana", "job2"]
    job1, banana, job2 = config.jobs
    assert job1 == JobSpec(
        "job1", "src/script.sh", "s3://bucket-to-use/folder/path/to/project", None, 10
    )
    assert banana.wait_time == 240 and banana.handler == "long-running-script.sh"
    assert job2.s3_uri is None
    assert job2.local_path == str(FIXTURES / "seed-example" / "files" / "is-this-even-a-job")
    assert job2.handler == "is-this-even-a-job"
    assert config.warnings == ()
    assert config.summary().endswith("3 jobs, sequential: job1 -> banana -> job2")


def test_seed_example_with_absolute_local_path(tmp_path):
    job_dir = tmp_path / "path" / "to" / "the" / "job"
    job_dir.mkdir(parents=True)
    (job_dir / "is-this-even-a-job").write_text("echo hi\n")
    config = parse(
        f"""\
        [order]
        sequential = job1, banana, job2

        [job job1]
        handler = src/script.sh
        s3_uri = s3://bucket-to-use/folder/path/to/project

        [job job2]
        handler = is-this-even-a-job
        local_path = {job_dir}/is-this-even-a-job

        [job banana]
        handler = long-running-script.sh
        s3_uri = s3://bucket-to-use/folder/path/to/project
        wait_time = 240
        """,
        tmp_path / "elsewhere",
    )
    assert [j.name for j in config.jobs] == ["job1", "banana", "job2"]
    assert config.jobs[2].local_path == str(job_dir / "is-this-even-a-job")


def test_docs_order_snippets(tmp_path):
    for kind, names in (
        ("sequential", ["firstjob", "secondjob", "thirdjob"]),
        ("parallel", ["paralleljob1", "paralleljob2", "otherjob"]),
    ):
        jobs = "".join(f"[job {n}]\nhandler = s.sh\ns3_uri = s3://thebucket/{n}\n\n" for n in names)
        config = parse(f"[order]\n{kind} = {', '.join(names)}\n\n{jobs}", tmp_path)
        assert config.order == kind
        assert [j.name for j in config.jobs] == names
    assert config.summary() == (
        "jobs.ini: 3 jobs in parallel: paralleljob1, paralleljob2, otherjob"
    )


def test_docs_job_snippets(tmp_path):
    (tmp_path / "path" / "to" / "the").mkdir(parents=True)
    (tmp_path / "path" / "to" / "the" / "script").write_text("echo\n")
    project = tmp_path / "relative" / "path" / "project"
    (project / "script" / "path" / "in").mkdir(parents=True)
    (project / "script" / "path" / "in" / "project.sh").write_text("echo\n")
    config = parse(
        f"""\
        [order]
        parallel = apple, banana, carrot, danish

        [job apple]
        s3_uri = s3://thebucket/thefolder
        handler = thescript

        [job banana]
        local_path = {tmp_path}/path/to/the/script
        handler = script

        [job carrot]
        local_path = relative/path/project
        handler = script/path/in/project.sh

        [job danish]
        s3_uri = s3://bucket/script
        handler = script
        wait_time = 240
        """,
        tmp_path,
    )
    apple, banana, carrot, danish = config.jobs
    assert apple.s3_uri == "s3://thebucket/thefolder" and apple.wait_time == DEFAULT_WAIT_TIME
    assert banana.local_path == str(tmp_path / "path" / "to" / "the" / "script")
    assert carrot.local_path == str(project)
    assert carrot.handler == "script/path/in/project.sh"
    assert danish.wait_time == 240
    assert config.warnings == ()


# ---------------------------------------------------------------------------------------------
# Accepted variations (decisions documented in config.py)


def test_whitespace_case_comments_and_continuations(tmp_path):
    config = parse(
        """\
        # full-line comment
        ; another one
        [ORDER]
        Sequential =
            a ,b,
            ; a comment inside the value is skipped
            c

        [ Job   a ]
        HANDLER = ./src//run.sh
        s3_uri = s3://my-bucket/a/
        wait_time =  7

        [job b]
        handler = run.sh
        s3_uri = s3://my.bucket-1/100%/done
        wait_time = 010
        [job c]
          handler = run.sh
          s3_uri = s3://my-bucket/c
        """,
        tmp_path,
    )
    assert [j.name for j in config.jobs] == ["a", "b", "c"]
    assert config.jobs[0].handler == "src/run.sh"
    assert config.jobs[0].wait_time == 7
    assert config.jobs[1].s3_uri == "s3://my.bucket-1/100%/done"
    assert config.jobs[1].wait_time == 10
    assert config.warnings == ()


def test_percent_in_local_path_does_not_crash(tmp_path):
    folder = tmp_path / "100%done %(x)s"
    folder.mkdir()
    (folder / "run.sh").write_text("echo\n")
    config = parse(
        "[order]\nparallel = a\n[job a]\nhandler = run.sh\nlocal_path = 100%done %(x)s\n",
        tmp_path,
    )
    assert config.jobs[0].local_path == str(folder)


def test_whole_bucket_is_accepted_with_a_warning(tmp_path):
    for uri in ("s3://my-bucket", "s3://my-bucket/"):
        config = parse(
            f"[order]\nsequential = a\n[job a]\nhandler = run.sh\ns3_uri = {uri}\n", tmp_path
        )
        assert config.jobs[0].s3_uri == uri
        (warning,) = config.warnings
        assert warning.severity == "warning" and warning.line == 5 and warning.key == "s3_uri"
        assert "whole bucket" in warning.message
        assert str(warning).startswith("jobs.ini:5: warning: [job a] s3_uri: ")


def test_utf8_bom_and_crlf(tmp_path):
    path = tmp_path / "jobs.ini"
    path.write_bytes(("\ufeff" + GOOD_ORDER + GOOD_JOB_A).replace("\n", "\r\n").encode())
    assert [j.name for j in load_jobs_config(path).jobs] == ["a"]


def test_summary_abbreviates_long_lists():
    jobs = tuple(JobSpec(f"j{i}", "r.sh", "s3://b-b/k", None, 10) for i in range(20))
    seq = JobsConfig("x.ini", "sequential", jobs, ()).summary()
    assert seq == "x.ini: 20 jobs, sequential: j0 -> j1 -> j2 -> j3 -> ... (14 more) -> j18 -> j19"
    par = JobsConfig("x.ini", "parallel", jobs, ()).summary()
    assert par.startswith("x.ini: 20 jobs in parallel: j0, j1") and "\n" not in par
    one = JobsConfig("x.ini", "sequential", jobs[:1], ()).summary()
    assert one == "x.ini: 1 job, sequential: j0"


def test_problem_str_format():
    p = Problem(
        "jobs.ini", 12, "job banana", "wait_time", "must be an integer from 1 to 240, got 'ten'"
    )
    assert (
        str(p) == "jobs.ini:12: [job banana] wait_time: must be an integer from 1 to 240, got 'ten'"
    )
    w = Problem("jobs.ini", 3, "job x", None, "not listed", "warning")
    assert str(w) == "jobs.ini:3: warning: [job x] not listed"
    assert str(Problem("jobs.ini", None, None, None, "no such file")) == "jobs.ini: no such file"


# ---------------------------------------------------------------------------------------------
# Bad files (whole-file problems)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_jobs_config(tmp_path / "nope.ini")
    (problem,) = info.value.problems
    assert problem.path == str(tmp_path / "nope.ini") and problem.line is None
    assert "no such file" in str(problem)


def test_directory_as_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_jobs_config(tmp_path)
    assert "is a folder" in str(info.value)


def test_empty_file(tmp_path):
    for text in ("", "\n\n", "# only a comment\n; and another\n"):
        path = tmp_path / "empty.ini"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_jobs_config(path)
        (problem,) = info.value.problems
        assert "empty" in problem.message


def test_not_utf8_fixture():
    with pytest.raises(ConfigError) as info:
        load_jobs_config(FIXTURES / "not-utf8.ini")
    (problem,) = info.value.problems
    assert (
        problem.line == 5
        and "not a UTF-8 text file" in problem.message
        and "0xff" in problem.message
    )


def test_binary_file(tmp_path):
    path = tmp_path / "a.out"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" * 50)
    with pytest.raises(ConfigError) as info:
        load_jobs_config(path)
    assert "binary" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        '{"order": {"sequential": ["a", "b"]}}\n',
        "order:\n  sequential: [a, b]\n",
        "just some prose\nover two lines\n",
    ],
)
def test_not_ini(tmp_path, text):
    problem = only_error(text, tmp_path)
    assert_at(problem, 1, None, None, "not an INI jobs config")


def test_lines_outside_any_section(tmp_path):
    problem = only_error("sequential = a\n" + GOOD_ORDER + GOOD_JOB_A, tmp_path)
    assert_at(problem, 1, None, None, "outside any section")


def test_key_without_equals(tmp_path):
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + "wait_time: 20\n", tmp_path)
    assert_at(problem, 7, "job a", None, "expected 'key = value'", "use '='")
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + "verbose\n", tmp_path)
    assert_at(problem, 7, "job a", None, "expected 'key = value'", "'verbose'")


def test_value_without_key(tmp_path):
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + "= 5\n", tmp_path)
    assert_at(problem, 7, "job a", None, "without a key")


def test_duplicate_sections(tmp_path):
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + GOOD_JOB_A, tmp_path)
    assert_at(problem, 7, "job a", None, "duplicate section", "line 4")
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + "[Order]\nparallel = a\n", tmp_path)
    assert_at(problem, 7, "Order", None, "duplicate section", "line 1")


def test_duplicate_keys(tmp_path):
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + "Handler = other.sh\n", tmp_path)
    assert_at(problem, 7, "job a", "Handler", "duplicate key", "line 5")
    problem = only_error("[order]\nsequential = a\nsequential = a\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 3, "order", "sequential", "duplicate key", "line 2")


def test_malformed_section_header(tmp_path):
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + "[job b  # comment\n", tmp_path)
    assert_at(problem, 7, None, None, "malformed section header")
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + "[]\n", tmp_path)
    assert_at(problem, 7, None, None, "empty section header")


# ---------------------------------------------------------------------------------------------
# [order]


def test_missing_order_section(tmp_path):
    problem = only_error(GOOD_JOB_A, tmp_path)
    assert_at(problem, None, "order", None, "section is missing")


def test_neither_order_key(tmp_path):
    problem = only_error("[order]\n\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 1, "order", None, "exactly one of 'sequential' or 'parallel'")


def test_both_order_keys(tmp_path):
    problem = only_error("[order]\nsequential = a\nparallel = a\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 3, "order", "parallel", "both set", "line 2")


@pytest.mark.parametrize("value", ["", " "])
def test_empty_list(tmp_path, value):
    problem = only_error(f"[order]\nsequential ={value}\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 2, "order", "sequential", "empty list")


def test_only_commas(tmp_path):
    problem = only_error("[order]\nparallel = , ,\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 2, "order", "parallel", "empty list")


def test_trailing_comma(tmp_path):
    problem = only_error("[order]\nsequential = a,\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 2, "order", "sequential", "trailing comma after 'a'")


def test_leading_comma(tmp_path):
    problem = only_error("[order]\nsequential = ,a\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 2, "order", "sequential", "leading comma")


def test_doubled_comma(tmp_path):
    text = (
        "[order]\nsequential = a,, b\n"
        + GOOD_JOB_A
        + "[job b]\nhandler = r.sh\ns3_uri = s3://bkt/b\n"
    )
    problem = only_error(text, tmp_path)
    assert_at(problem, 2, "order", "sequential", "doubled comma after 'a'")


def test_missing_commas(tmp_path):
    problem = only_error("[order]\nsequential = a b\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 2, "order", "sequential", "separate job names with commas")


def test_duplicate_names_in_list(tmp_path):
    problem = only_error("[order]\nparallel = a, a\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 2, "order", "parallel", "'a' is listed more than once")


def test_listed_job_without_section(tmp_path):
    text = (
        "[order]\nsequential = a, banan\n"
        + GOOD_JOB_A
        + "[job banana]\nhandler = r.sh\ns3_uri = s3://bkt/b\n"
    )
    problems = errors_of(text, tmp_path)
    assert len(problems) == 1
    assert_at(
        problems[0], 2, "order", "sequential", "no [job banan] section", "did you mean 'banana'?"
    )


def test_listed_job_differs_in_case(tmp_path):
    problem = only_error("[order]\nsequential = A\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 2, "order", "sequential", "no [job A] section", "did you mean [job a]?")


def test_unlisted_job_section_is_a_warning(tmp_path):
    config = parse(
        GOOD_ORDER + GOOD_JOB_A + "\n[job extra]\nhandler = r.sh\ns3_uri = s3://bkt/x\n", tmp_path
    )
    assert [j.name for j in config.jobs] == ["a"]
    (warning,) = config.warnings
    assert warning.severity == "warning"
    assert (warning.line, warning.section, warning.key) == (8, "job extra", None)
    assert "not listed" in warning.message and "will not run" in warning.message
    assert str(warning).startswith("jobs.ini:8: warning: [job extra] ")


def test_unknown_key_in_order(tmp_path):
    problem = only_error("[order]\nsequential = a\nsequental = a\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 3, "order", "sequental", "unknown key", "did you mean 'sequential'?")
    problem = only_error("[order]\nsequential = a\nhandler = x\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 3, "order", "handler", "unknown key", "belongs in [job NAME] sections")


def test_order_section_with_a_name(tmp_path):
    problem = only_error("[order jobs]\nsequential = a\n" + GOOD_JOB_A, tmp_path)
    assert_at(problem, 1, "order jobs", None, "takes no name")


# ---------------------------------------------------------------------------------------------
# [job X]


def test_missing_handler(tmp_path):
    problem = only_error(GOOD_ORDER + "[job a]\ns3_uri = s3://my-bucket/a\n", tmp_path)
    assert_at(problem, 4, "job a", "handler", "missing")


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("/usr/bin/run.sh", "not an absolute path"),
        ("../run.sh", "'..' is not allowed"),
        ("src/../../run.sh", "'..' is not allowed"),
        ("~/run.sh", "'~' is not expanded"),
        ("src\\run.sh", "use '/'"),
        ("src/", "must name a file"),
        (".", "must name a file"),
        ("", "is empty"),
    ],
)
def test_bad_handler(tmp_path, value, fragment):
    problem = only_error(
        GOOD_ORDER + f"[job a]\nhandler = {value}\ns3_uri = s3://my-bucket/a\n", tmp_path
    )
    assert_at(problem, 5, "job a", "handler", fragment)


def test_both_s3_uri_and_local_path(tmp_path):
    (tmp_path / "run.sh").write_text("echo\n")
    text = (
        GOOD_ORDER + "[job a]\nhandler = run.sh\ns3_uri = s3://my-bucket/a\nlocal_path = run.sh\n"
    )
    problem = only_error(text, tmp_path)
    assert_at(problem, 7, "job a", "local_path", "both 's3_uri' and 'local_path'", "line 6")


def test_neither_s3_uri_nor_local_path(tmp_path):
    problem = only_error(GOOD_ORDER + "[job a]\nhandler = run.sh\n", tmp_path)
    assert_at(problem, 4, "job a", None, "exactly one of 's3_uri' or 'local_path'")


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("s3:/x", "expected s3://BUCKET/KEY-OR-PREFIX"),
        ("https://my-bucket.s3.amazonaws.com/key", "not an HTTP(S) URL"),
        ("S3://my-bucket/key", "lowercase 's3://'"),
        ("s3://", "bucket name is missing"),
        ("s3:///key", "bucket name is missing"),
        ("bucket/key", "expected s3://BUCKET/KEY-OR-PREFIX"),
        ("s3://ab/key", "invalid bucket name 'ab'"),
        ("s3://" + "b" * 64 + "/key", "it has 64"),
        ("s3://My-Bucket/key", "lowercase letters"),
        ("s3://-bucket/key", "starting and ending with a letter or digit"),
        ("s3://bucket-/key", "starting and ending with a letter or digit"),
        ("s3://my_bucket/key", "lowercase letters, digits"),
        ("s3://my..bucket/key", "'..'"),
        ("s3://192.168.1.1/key", "IP address"),
        ("s3://my-bucket//key", "empty path segment"),
        ("s3://my-bucket/a/../b", "'..' path segment"),
        ("s3://my-bucket/" + "k" * 1025, "longer than 1024 bytes"),
        ("", "is empty"),
    ],
)
def test_malformed_s3_uri(tmp_path, uri, fragment):
    problem = only_error(GOOD_ORDER + f"[job a]\nhandler = run.sh\ns3_uri = {uri}\n", tmp_path)
    assert_at(problem, 6, "job a", "s3_uri", fragment)


@pytest.mark.parametrize("uri, fragment", [
    # a "," would split JobSourceObjectArns (a CommaDelimitedList) into a second ARN
    ("s3://my-bucket/x,arn:aws:s3:::other/", "the key contains ','"),
    ("s3://my-bucket/a,b", "would split the staging functions' S3 read permission"),
    # samconfig.toml's parameter_overrides cannot carry these to `sam deploy` unchanged
    ('s3://my-bucket/a"b/', "a double quote"),
    ("s3://my-bucket/a\\b/", "a backslash"),
])
def test_s3_uri_that_iam_cannot_grant_exactly_is_refused(tmp_path, uri, fragment):
    problem = only_error(GOOD_ORDER + f"[job a]\nhandler = run.sh\ns3_uri = {uri}\n", tmp_path)
    assert_at(problem, 6, "job a", "s3_uri", fragment, "rename the objects")


@pytest.mark.parametrize("uri", ["s3://my-bucket/*", "s3://my-bucket/a?c/", "s3://my-bucket/$x",
                                 "s3://my-bucket/${aws:username}/", "s3://my-bucket/a b;#%/"])
def test_s3_uri_with_iam_special_characters_is_accepted(tmp_path, uri):
    """preprocess writes "*", "?" and "$" as IAM literals; the config may name such keys."""
    config = parse(GOOD_ORDER + f"[job a]\nhandler = run.sh\ns3_uri = {uri}\n", tmp_path)
    assert config.jobs[0].s3_uri == uri


def test_local_path_does_not_exist(tmp_path):
    problem = only_error(
        GOOD_ORDER + "[job a]\nhandler = run.sh\nlocal_path = nowhere/project\n", tmp_path
    )
    assert_at(
        problem, 6, "job a", "local_path", "does not exist", str(tmp_path / "nowhere" / "project")
    )
    problem = only_error(
        GOOD_ORDER + "[job a]\nhandler = run.sh\nlocal_path = /no/such/dir\n", tmp_path
    )
    assert_at(problem, 6, "job a", "local_path", "does not exist", "'/no/such/dir'")


def test_local_path_folder_without_the_handler(tmp_path):
    (tmp_path / "project").mkdir()
    problem = only_error(GOOD_ORDER + "[job a]\nhandler = run.sh\nlocal_path = project\n", tmp_path)
    assert_at(problem, 6, "job a", "local_path", "handler 'run.sh' is not a file in it")


def test_local_path_file_with_another_handler(tmp_path):
    (tmp_path / "script.sh").write_text("echo\n")
    problem = only_error(
        GOOD_ORDER + "[job a]\nhandler = run.sh\nlocal_path = script.sh\n", tmp_path
    )
    assert_at(
        problem, 6, "job a", "local_path", "single file 'script.sh'", "handler must be 'script.sh'"
    )


@pytest.mark.parametrize(
    "value", ["ten", "10.0", "1e2", "-5", "+5", "0", "241", "", "٣", "10  # seconds"]
)
def test_bad_wait_time(tmp_path, value):
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + f"wait_time = {value}\n", tmp_path)
    assert_at(problem, 7, "job a", "wait_time", "must be an integer from 1 to 240", repr(value))
    if "#" in value:
        assert "inline comments are not supported" in problem.message


@pytest.mark.parametrize("value, expected", [(" 10 ", 10), ("1", 1), ("240", 240), ("\t60", 60)])
def test_good_wait_time(tmp_path, value, expected):
    config = parse(GOOD_ORDER + GOOD_JOB_A + f"wait_time ={value}\n", tmp_path)
    assert config.jobs[0].wait_time == expected


@pytest.mark.parametrize(
    "key, suggestion",
    [
        ("wait-time", "wait_time"),
        ("handeler", "handler"),
        ("s3-uri", "s3_uri"),
        ("localpath", "local_path"),
    ],
)
def test_unknown_key_in_job(tmp_path, key, suggestion):
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + f"{key} = 5\n", tmp_path)
    assert_at(problem, 7, "job a", key, "unknown key", f"did you mean '{suggestion}'?")


def test_order_key_in_a_job_section(tmp_path):
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + "sequential = b\n", tmp_path)
    assert_at(problem, 7, "job a", "sequential", "belongs in the [order] section")


def test_single_value_over_several_lines(tmp_path):
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + "wait_time = 1\n   0\n", tmp_path)
    assert_at(problem, 7, "job a", "wait_time", "must be on one line", "line 8")


def test_inline_comment_on_a_path_warns(tmp_path):
    config = parse(
        GOOD_ORDER + "[job a]\nhandler = run.sh\ns3_uri = s3://bkt/a # the data\n", tmp_path
    )
    (warning,) = config.warnings
    assert (warning.line, warning.key) == (6, "s3_uri") and "inline comment" in warning.message


# ---------------------------------------------------------------------------------------------
# Section names and job names


@pytest.mark.parametrize(
    "header, fragment",
    [
        ("[jobs a]", "did you mean [job a]?"),
        ("[Jobb a]", "did you mean [job a]?"),
        ("[ordre]", "did you mean [order]?"),
        ("[DEFAULT]", "only [order] and [job NAME] are allowed"),
        ("[task a]", "only [order] and [job NAME] are allowed"),
    ],
)
def test_unknown_section_type(tmp_path, header, fragment):
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + f"{header}\nhandler = x\n", tmp_path)
    assert_at(problem, 7, header[1:-1], None, "unknown section", fragment)


def test_job_section_without_a_name(tmp_path):
    problems = errors_of(GOOD_ORDER + GOOD_JOB_A + "[job]\nhandler = x\n", tmp_path)
    assert len(problems) == 1
    assert_at(problems[0], 7, "job", None, "needs a name: [job NAME]")


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("a b", "contains spaces"),
        ("a;rm", "contains ';'"),
        ("../etc", "contains '.' '/'"),
        ("$(id)", "contains"),
        ("-rf", "starts with '-'"),
        ("x" * 65, "at most 64"),
        ("héllo", "contains 'é'"),
    ],
)
def test_unsafe_job_names(tmp_path, name, fragment):
    bad_job = f"[job {name}]\nhandler = r.sh\ns3_uri = s3://bkt/x\n"
    text = f"[order]\nsequential = a\n\n{GOOD_JOB_A}{bad_job}"
    problem = only_error(text, tmp_path)
    assert_at(problem, 7, f"job {name}", None, fragment)
    # The same name in the [order] list is refused there too, at the list's line.
    text = f"[order]\nsequential = a, {name}\n\n{GOOD_JOB_A}"
    problems = errors_of(text, tmp_path)
    assert problems[0].line == 2 and problems[0].key == "sequential"


def test_longest_allowed_name(tmp_path):
    name = "A_b-9" + "x" * 59
    config = parse(
        f"[order]\nsequential = {name}\n[job {name}]\nhandler = r.sh\ns3_uri = s3://bkt/x\n",
        tmp_path,
    )
    assert config.jobs[0].name == name


def test_names_differing_only_in_case(tmp_path):
    text = (
        "[order]\nsequential = a, A\n"
        + GOOD_JOB_A
        + "[job A]\nhandler = r.sh\ns3_uri = s3://bkt/x\n"
    )
    problems = errors_of(text, tmp_path)
    messages = "\n".join(map(str, problems))
    assert "listed more than once" in messages
    assert "jobs.ini:6: [job A] job name 'A' differs only in case from 'a' (line 3)" in messages


# ---------------------------------------------------------------------------------------------
# Everything at once


def test_many_errors_are_all_reported():
    with pytest.raises(ConfigError) as info:
        load_jobs_config(FIXTURES / "many-errors.ini")
    problems = info.value.problems
    got = {(p.line, p.section, p.key) for p in problems}
    expected = {
        (
            3,
            "order",
            "sequential",
        ),  # doubled comma / listed twice / trailing comma / missing report
        (4, "order", "sequental"),
        (6, "job prepare", "handler"),  # missing
        (7, "job prepare", "handeler"),
        (8, "job prepare", "s3_uri"),
        (9, "job prepare", "wait_time"),
        (12, "job simulate", "handler"),
        (14, "job simulate", "local_path"),  # both s3_uri and local_path
        (15, "job simulate", "wait-time"),
        (17, "jobs report", None),
        (20, "job bad name", None),
    }
    assert expected <= got, "\n".join(map(str, problems))
    text = str(info.value)
    for fragment in (
        "doubled comma after 'simulate'",
        "'prepare' is listed more than once",
        "trailing comma after 'prepare'",
        "no [job report] section",
        "did you mean 'sequential'?",
        "did you mean 'handler'?",
        "did you mean 'wait_time'?",
        "did you mean [job report]?",
        "got 'ten'",
        "'..' is not allowed",
        "contains spaces",
    ):
        assert fragment in text, text
    lines = [p.line or 0 for p in problems]
    assert lines == sorted(lines), "problems are reported in file order"
    assert all(str(p).startswith(str(FIXTURES / "many-errors.ini")) for p in problems)


# ---------------------------------------------------------------------------------------------
# Fuzz: nothing but ConfigError or success ever comes out


GOOD_TEXT = (FIXTURES / "seed-example" / "jobs.ini").read_text()


def _attempt(func, *args):
    try:
        result = func(*args)
    except ConfigError as exc:
        assert exc.problems and all(str(p) for p in exc.problems)
        str(exc)
        return None
    assert isinstance(result, JobsConfig)
    result.summary()
    return result


def test_fuzz_truncations_and_mutations():
    base = FIXTURES / "seed-example"
    assert _attempt(parse_jobs_config, GOOD_TEXT, PATH, base) is not None
    for cut in range(len(GOOD_TEXT)):
        _attempt(parse_jobs_config, GOOD_TEXT[:cut], PATH, base)
    rng = random.Random(20180808)
    alphabet = "[]=,;#% \t\n\r/.:-_\\~aAjob0\x00\x7f\u00e9\ufeff"
    lines = GOOD_TEXT.splitlines(keepends=True)
    for _ in range(1500):
        text = list(GOOD_TEXT)
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(text) + 1)
            if op < 0.4:
                text.insert(pos, rng.choice(alphabet))
            elif op < 0.8 and text:
                del text[min(pos, len(text) - 1)]
            elif text:
                text[min(pos, len(text) - 1)] = rng.choice(alphabet)
        _attempt(parse_jobs_config, "".join(text), PATH, base)
        shuffled = lines[:]
        rng.shuffle(shuffled)
        _attempt(parse_jobs_config, "".join(shuffled[: rng.randint(0, len(shuffled))]), PATH, base)


def test_fuzz_random_bytes(tmp_path):
    rng = random.Random(489)
    path = tmp_path / "jobs.ini"
    good = GOOD_TEXT.encode()
    for i in range(300):
        if i % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        else:
            data = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        path.write_bytes(data)
        _attempt(load_jobs_config, path)


def test_config_error_is_a_stepcluster_error():
    assert issubclass(ConfigError, StepclusterError)


# ---------------------------------------------------------------------------------------------
# Bad input found by fuzzing (issue 8, section 2): a Problem, never a traceback


@pytest.mark.parametrize(
    "value", ["9" * 5000, "1" + "0" * 4299, "9" * 4301, "-" + "9" * 5000, "9" * 19, "241" * 2000]
)
def test_a_huge_wait_time_is_the_ordinary_range_problem(tmp_path, value):
    # int() of more than 4,300 digits raises ValueError: it used to escape as a traceback.
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + f"wait_time = {value}\n", tmp_path)
    assert_at(problem, 7, "job a", "wait_time", "must be an integer from 1 to 240 (seconds)")
    assert len(str(problem)) < 300, "the value is shortened in the message"


def test_leading_zeros_in_wait_time_are_still_the_number(tmp_path):
    config = parse(GOOD_ORDER + GOOD_JOB_A + "wait_time = " + "0" * 5000 + "30\n", tmp_path)
    assert config.jobs[0].wait_time == 30


UNSAFE = {
    "escape": "\x1b[31m",
    "C1 NEL": "\x85",
    "C1 CSI": "\x9b",
    "line separator": "\u2028",
    "paragraph separator": "\u2029",
    "bidi override": "\u202e",
    "zero-width space": "\u200b",
    "BOM inside": "\ufeff",
}


@pytest.mark.parametrize("char", list(UNSAFE.values()), ids=list(UNSAFE))
@pytest.mark.parametrize("key", ["handler", "s3_uri", "local_path"])
def test_control_and_format_characters_in_values_are_refused(tmp_path, key, char):
    (tmp_path / f"x{char}y").mkdir()
    (tmp_path / f"x{char}y" / "run.sh").write_text("true\n")
    values = {"handler": "run.sh", "s3_uri": None, "local_path": None}
    if key == "handler":
        values["handler"] = f"src/a{char}b.sh"
        values["s3_uri"] = "s3://my-bucket/a/"
    elif key == "s3_uri":
        values["s3_uri"] = f"s3://my-bucket/a{char}b/"
    else:
        values["local_path"] = f"x{char}y"
    body = "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None)
    problem = only_error(GOOD_ORDER + "[job a]\n" + body, tmp_path)
    line = 5 + [k for k, v in values.items() if v is not None].index(key)
    assert_at(problem, line, "job a", key, "contains control or invisible formatting characters")
    assert str(problem).isprintable(), repr(str(problem))


def test_problem_rendering_escapes_what_could_drive_a_terminal():
    problem = Problem(
        "jobs\x1b]0;title\x07.ini", 3, "job \u202ea", "ke\x9by", "bad\u2028value\x85\ufeff"
    )
    rendered = str(problem)
    assert rendered.isprintable(), repr(rendered)
    assert rendered == (
        "jobs\\x1b]0;title\\x07.ini:3: [job \\u202ea] ke\\x9by: bad\\u2028value\\x85\\ufeff"
    )
    # Ordinary text, spaces and non-ASCII letters are left as they are.
    assert str(Problem("jobs.ini", 1, "job a", "handler", "héllo wörld")).endswith("héllo wörld")


def test_an_unknown_key_with_escapes_is_printed_escaped(tmp_path):
    problem = only_error(GOOD_ORDER + GOOD_JOB_A + "wait\x1b[2J\u202etime = 5\n", tmp_path)
    assert problem.line == 7 and "unknown key" in problem.message
    assert str(problem).isprintable() and "\\x1b[2J\\u202e" in str(problem)
