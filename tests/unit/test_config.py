"""Tests of the jobs config reader (functions/stepcluster/config.py).

The contract is the grammar and the examples of the user's original docs (stepfunctions.rst);
every bad input must come out as a ConfigError naming file, line, section and key, never as a
traceback (the original feature's main defect).
"""

from __future__ import annotations

import os
import random
import textwrap
from pathlib import Path

import pytest

from stepcluster import config as config_module
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
    # Up to eight names are all shown; from nine on, the first four and the last two.
    eight = JobsConfig("x.ini", "parallel", jobs[:8], ()).summary()
    assert eight == "x.ini: 8 jobs in parallel: " + ", ".join(f"j{i}" for i in range(8))
    nine = JobsConfig("x.ini", "parallel", jobs[:9], ()).summary()
    assert nine == "x.ini: 9 jobs in parallel: j0, j1, j2, j3, ... (3 more), j7, j8"


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


# ---------------------------------------------------------------------------------------------
# Exactly what a user sees: one config per message, every problem rendered in full (errors by
# line, then warnings). Written down from the parser before it was split into inifile.py and
# config.py, so they also pin that the split changed no message, line or order.

ORDER_A = "[order]\nsequential = a\n"
JOB_A = "[job a]\nhandler = run.sh\ns3_uri = s3://my-bucket/a/\n"


def job_a(*lines):
    """ORDER_A and a [job a] section of `lines`: [job a] is on line 3, its keys from line 4."""
    return ORDER_A + "[job a]\n" + "".join(line + "\n" for line in lines)


def other_job(name):
    return f"[job {name}]\nhandler = r.sh\ns3_uri = s3://my-bucket/x\n"


EXACT_CASES = {
    "order missing, problems without a line first": JOB_A + "bogus = 1\n",
    "unlisted job": ORDER_A + JOB_A + "[job b]\nhandler = run.sh\ns3_uri = s3://my-bucket/b/\n",
    "neither order key": "[order]\n" + JOB_A,
    "both order keys": "[order]\nparallel = a\nsequential = a\n" + JOB_A,
    "job value over two lines": ORDER_A + JOB_A + "wait_time = 1\n  0\n",
    "inline comment warnings": job_a("handler = run.sh # x", "local_path = proj ; y"),
    "inline comment warning s3": job_a("handler = run.sh", "s3_uri = s3://my-bucket/a #b"),
    "no warning for unknown or multi-line keys": job_a(
        "handler = run.sh", "bogus = x #c", "local_path = p", "  q #x"
    ),
    "unknown key without hint": ORDER_A + JOB_A + "zzz = 1\n",
    "unknown key in order without hint": "[order]\nsequential = a\nzzz = 1\n" + JOB_A,
    "order with a name": "[order x]\n sequential = a\n" + JOB_A,
    "job without a name": ORDER_A + JOB_A + "[job]\n",
    "job name of two words": ORDER_A + JOB_A + "[job  b  c ]\n",
    "jobs with a name": ORDER_A + JOB_A + "[jobs b c]\n",
    "jobs without a name": ORDER_A + JOB_A + "[Jobs]\n",
    "ordre": ORDER_A + JOB_A + "[ordre]\n",
    "unknown section without hint": ORDER_A + JOB_A + "[task]\n",
    "keys of an unknown section are not read": ORDER_A + JOB_A + "[task a]\nk = 1\nk = 2\n",
    "keys of a duplicate section are not read": ORDER_A + JOB_A + "[job a]\nk = 1\nk = 2\n",
    "bad characters listed": "[order]\nsequential = Ab;c\n" + other_job("Ab;c"),
    "name starting with dash": "[order]\nsequential = a\n" + JOB_A + "[job -x]\n",
    "long name": ORDER_A + JOB_A + "[job " + "x" * 65 + "]\n",
    "list: bad then more": "[order]\nsequential = a b, zz\n" + JOB_A,
    "list: listed twice": "[order]\nsequential = a, a, A\n" + JOB_A,
    "list: case hint": "[order]\nsequential = A\n" + JOB_A,
    "list: no close match": "[order]\nsequential = a, abc\n" + JOB_A + other_job("abcxyz"),
    "list: close match": "[order]\nsequential = a, banan\n" + JOB_A + other_job("banana"),
    "list: empty": "[order]\nsequential =\n" + JOB_A,
    "list: only commas": "[order]\nsequential = ,,\n" + JOB_A,
    "list: trailing commas": "[order]\nsequential = a,,\n" + JOB_A,
    "list: trailing comma": "[order]\nsequential = a,\n" + JOB_A,
    "list: leading comma": "[order]\nsequential = ,a,,b\n" + JOB_A + other_job("b"),
    "list: three commas": "[order]\nsequential = a,,,b\n" + JOB_A + other_job("b"),
    "list: inline comment": "[order]\nsequential = a, #b c\n" + JOB_A,
    "list: bad name": "[order]\nsequential = a, a;rm\n" + JOB_A,
    "handler empty": job_a("handler =", "s3_uri = s3://my-bucket/a/"),
    "handler absolute": job_a("handler = /a.sh", "s3_uri = s3://my-bucket/a/"),
    "handler home": job_a("handler = ~/a.sh", "s3_uri = s3://my-bucket/a/"),
    "handler backslash": job_a("handler = a\\b.sh", "s3_uri = s3://my-bucket/a/"),
    "handler folder": job_a("handler = src/", "s3_uri = s3://my-bucket/a/"),
    "handler dotdot": job_a("handler = a/../b.sh", "s3_uri = s3://my-bucket/a/"),
    "handler dot": job_a("handler = ./.", "s3_uri = s3://my-bucket/a/"),
    "handler missing, no source": "[order]\nsequential = a\n[job a]\nwait_time = 5\n",
    "both sources": job_a("handler = run.sh", "local_path = proj", "s3_uri = s3://my-bucket/a/"),
    "s3 empty": job_a("handler = run.sh", "s3_uri ="),
    "s3 http": job_a("handler = run.sh", "s3_uri = http://my-bucket/a"),
    "s3 https": job_a("handler = run.sh", "s3_uri = HTTPS://my-bucket/a"),
    "s3 uppercase scheme": job_a("handler = run.sh", "s3_uri = S3://my-bucket/a"),
    "s3 other": job_a("handler = run.sh", "s3_uri = my-bucket/a"),
    "s3 no bucket": job_a("handler = run.sh", "s3_uri = s3:///a"),
    "s3 whole bucket": job_a("handler = run.sh", "s3_uri = s3://my-bucket/"),
    "bucket short": job_a("handler = run.sh", "s3_uri = s3://ab/k"),
    "bucket 63": job_a("handler = run.sh", "s3_uri = s3://" + "b" * 63 + "/k"),
    "bucket 64": job_a("handler = run.sh", "s3_uri = s3://" + "b" * 64 + "/k"),
    "bucket chars": job_a("handler = run.sh", "s3_uri = s3://my_bucket/k"),
    "bucket dot dash": job_a("handler = run.sh", "s3_uri = s3://ab.-cd/k"),
    "bucket dash dot": job_a("handler = run.sh", "s3_uri = s3://ab-.cd/k"),
    "bucket ip": job_a("handler = run.sh", "s3_uri = s3://10.0.0.1/k"),
    "key 1024": job_a("handler = run.sh", "s3_uri = s3://my-bucket/" + "k" * 1024),
    "key 1025": job_a("handler = run.sh", "s3_uri = s3://my-bucket/" + "k" * 1025),
    "key dotdot last": job_a("handler = run.sh", "s3_uri = s3://my-bucket/a/.."),
    "key dotdot before slash": job_a("handler = run.sh", "s3_uri = s3://my-bucket/a/../"),
    "key dot": job_a("handler = run.sh", "s3_uri = s3://my-bucket/a/./b"),
    "key empty segment": job_a("handler = run.sh", "s3_uri = s3://my-bucket/a//b"),
    "key comma": job_a("handler = run.sh", "s3_uri = s3://my-bucket/a,b"),
    "key quote and backslash": job_a("handler = run.sh", 's3_uri = s3://my-bucket/a"b\\c'),
    "key backslash": job_a("handler = run.sh", "s3_uri = s3://my-bucket/a\\c"),
    "local empty": job_a("handler = run.sh", "local_path ="),
    "local absolute missing": job_a("handler = run.sh", "local_path = /no/such/dir"),
    "local relative missing": job_a("handler = run.sh", "local_path = nowhere"),
    "local handler is a folder": job_a("handler = sub", "local_path = proj"),
    "local handler not in folder": job_a("handler = other.sh", "local_path = proj"),
    "local single file": job_a("handler = run.sh", "local_path = single.sh"),
    "local fifo": job_a("handler = run.sh", "local_path = fifo"),
    "local symlink loop": job_a("handler = run.sh", "local_path = loop"),
    "local handler name too long": job_a("handler = " + "x" * 300, "local_path = proj"),
    "wait not a number": job_a("handler = run.sh", "s3_uri = s3://my-bucket/a/", "wait_time = x"),
    "wait inline comment": job_a(
        "handler = run.sh", "s3_uri = s3://my-bucket/a/", "wait_time = 10 # s"
    ),
}

EXACT_EXPECTED = {
    'order missing, problems without a line first': [
        "jobs.ini: [order] section is missing: add [order] with 'sequential = a, "
        "b' or 'parallel = a, b'",
        'jobs.ini:4: [job a] bogus: unknown key (allowed: handler, s3_uri, local_path, wait_time, nodes, tasks, cpus_per_task, memory, time_limit, queue, scheduler_options, array, depends_on, retries, retry_on)',
    ],
    'unlisted job': [
        "jobs.ini:6: warning: [job b] job 'b' is not listed in [order] sequential"
        ', so it will not run',
    ],
    'neither order key': [
        "jobs.ini:1: [order] needs exactly one of 'sequential' or 'parallel' (a c"
        'omma-separated list of job names)',
    ],
    'both order keys': [
        "jobs.ini:3: [order] sequential: 'sequential' and 'parallel' are both set"
        ' (the other on line 2): set exactly one',
    ],
    'job value over two lines': [
        'jobs.ini:6: [job a] wait_time: must be on one line (line 7 is indented d'
        'eeper, so it is read as a continuation of this value)',
    ],
    'inline comment warnings': [
        "jobs.ini:5: [job a] local_path: does not exist: 'proj ; y' (resolved to "
        "'<tmp>/proj ; y')",
        "jobs.ini:4: warning: [job a] handler: 'run.sh # x' looks like it ends wi"
        'th an inline comment; inline comments are not supported, the whole text '
        'is used as the value',
        "jobs.ini:5: warning: [job a] local_path: 'proj ; y' looks like it ends w"
        'ith an inline comment; inline comments are not supported, the whole text'
        ' is used as the value',
    ],
    'inline comment warning s3': [
        "jobs.ini:5: warning: [job a] s3_uri: 's3://my-bucket/a #b' looks like it"
        ' ends with an inline comment; inline comments are not supported, the who'
        'le text is used as the value',
    ],
    'no warning for unknown or multi-line keys': [
        'jobs.ini:5: [job a] bogus: unknown key (allowed: handler, s3_uri, local_path, wait_time, nodes, tasks, cpus_per_task, memory, time_limit, queue, scheduler_options, array, depends_on, retries, retry_on)',
        'jobs.ini:6: [job a] local_path: must be on one line (line 7 is indented '
        'deeper, so it is read as a continuation of this value)',
    ],
    'unknown key without hint': [
        'jobs.ini:6: [job a] zzz: unknown key (allowed: handler, s3_uri, local_path, wait_time, nodes, tasks, cpus_per_task, memory, time_limit, queue, scheduler_options, array, depends_on, retries, retry_on)',
    ],
    'unknown key in order without hint': [
        'jobs.ini:3: [order] zzz: unknown key (allowed: sequential, parallel, on_failure)',
    ],
    'order with a name': [
        'jobs.ini:1: [order x] the [order] section takes no name: write just [ord'
        'er]',
    ],
    'job without a name': [
        'jobs.ini:6: [job] a job section needs a name: [job NAME]',
    ],
    'job name of two words': [
        "jobs.ini:6: [job  b  c] job name 'b c' contains spaces: use letters, dig"
        "its, '_' and '-' (1 to 64 characters)",
        "jobs.ini:6: [job  b  c] handler: missing: name the script to run, e.g. '"
        "handler = run.sh'",
        "jobs.ini:6: [job  b  c] needs exactly one of 's3_uri' or 'local_path' (w"
        "here the job's files are)",
    ],
    'jobs with a name': [
        'jobs.ini:6: [jobs b c] unknown section [jobs b c]: only [order] and [job'
        ' NAME] are allowed; did you mean [job b c]?',
    ],
    'jobs without a name': [
        'jobs.ini:6: [Jobs] unknown section [Jobs]: only [order] and [job NAME] a'
        're allowed; did you mean [job NAME]?',
    ],
    'ordre': [
        'jobs.ini:6: [ordre] unknown section [ordre]: only [order] and [job NAME]'
        ' are allowed; did you mean [order]?',
    ],
    'unknown section without hint': [
        'jobs.ini:6: [task] unknown section [task]: only [order] and [job NAME] a'
        're allowed',
    ],
    'keys of an unknown section are not read': [
        'jobs.ini:6: [task a] unknown section [task a]: only [order] and [job NAM'
        'E] are allowed',
    ],
    'keys of a duplicate section are not read': [
        'jobs.ini:6: [job a] duplicate section: [job a] is already on line 3',
    ],
    'bad characters listed': [
        "jobs.ini:2: [order] sequential: 'Ab;c': job name 'Ab;c' contains ';': on"
        "ly letters, digits, '_' and '-' are allowed (names end up in state names"
        ', file names and shell commands)',
        "jobs.ini:3: [job Ab;c] job name 'Ab;c' contains ';': only letters, digit"
        "s, '_' and '-' are allowed (names end up in state names, file names and "
        'shell commands)',
    ],
    'name starting with dash': [
        "jobs.ini:6: [job -x] job name '-x' starts with '-': it would read as a c"
        "ommand-line option; start it with a letter, digit or '_'",
        "jobs.ini:6: [job -x] handler: missing: name the script to run, e.g. 'han"
        "dler = run.sh'",
        "jobs.ini:6: [job -x] needs exactly one of 's3_uri' or 'local_path' (wher"
        "e the job's files are)",
    ],
    'long name': [
        'jobs.ini:6: [job xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'
        'xxxxxxxxxx] job name is 65 characters long: at most 64 allowed',
        'jobs.ini:6: [job xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'
        "xxxxxxxxxx] handler: missing: name the script to run, e.g. 'handler = ru"
        "n.sh'",
        'jobs.ini:6: [job xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'
        "xxxxxxxxxx] needs exactly one of 's3_uri' or 'local_path' (where the job"
        "'s files are)",
    ],
    'list: bad then more': [
        "jobs.ini:2: [order] sequential: 'a b' is not a job name: separate job na"
        'mes with commas',
        "jobs.ini:2: [order] sequential: job 'zz' is listed but there is no [job "
        'zz] section',
        "jobs.ini:3: warning: [job a] job 'a' is not listed in [order] sequential"
        ', so it will not run',
    ],
    'list: listed twice': [
        "jobs.ini:2: [order] sequential: job 'a' is listed more than once",
        "jobs.ini:2: [order] sequential: job 'A' is listed more than once (as 'a'"
        '; names are compared ignoring case)',
    ],
    'list: case hint': [
        "jobs.ini:2: [order] sequential: job 'A' is listed but there is no [job A"
        '] section; did you mean [job a]? (names are case-sensitive)',
        "jobs.ini:3: warning: [job a] job 'a' is not listed in [order] sequential"
        ', so it will not run',
    ],
    'list: no close match': [
        "jobs.ini:2: [order] sequential: job 'abc' is listed but there is no [job"
        ' abc] section',
        "jobs.ini:6: warning: [job abcxyz] job 'abcxyz' is not listed in [order] "
        'sequential, so it will not run',
    ],
    'list: close match': [
        "jobs.ini:2: [order] sequential: job 'banan' is listed but there is no [j"
        "ob banan] section; did you mean 'banana'?",
        "jobs.ini:6: warning: [job banana] job 'banana' is not listed in [order] "
        'sequential, so it will not run',
    ],
    'list: empty': [
        'jobs.ini:2: [order] sequential: empty list: name at least one job, e.g. '
        "'first, second'",
    ],
    'list: only commas': [
        'jobs.ini:2: [order] sequential: empty list: only commas, no job names',
    ],
    'list: trailing commas': [
        "jobs.ini:2: [order] sequential: doubled comma after 'a': empty job name "
        'in the list',
        'jobs.ini:2: [order] sequential: trailing comma',
    ],
    'list: trailing comma': [
        "jobs.ini:2: [order] sequential: trailing comma after 'a'",
    ],
    'list: leading comma': [
        'jobs.ini:2: [order] sequential: leading comma: the list starts with an e'
        'mpty job name',
        "jobs.ini:2: [order] sequential: doubled comma after 'a': empty job name "
        'in the list',
    ],
    'list: three commas': [
        "jobs.ini:2: [order] sequential: doubled comma after 'a': empty job name "
        'in the list',
    ],
    'list: inline comment': [
        "jobs.ini:2: [order] sequential: '#b c' is not a job name: inline comment"
        's are not supported (put comments on their own line)',
    ],
    'list: bad name': [
        "jobs.ini:2: [order] sequential: 'a;rm': job name 'a;rm' contains ';': on"
        "ly letters, digits, '_' and '-' are allowed (names end up in state names"
        ', file names and shell commands)',
    ],
    'handler empty': [
        'jobs.ini:4: [job a] handler: is empty: name the script to run, relative '
        "to the job's files",
    ],
    'handler absolute': [
        "jobs.ini:4: [job a] handler: must be a path relative to the job's files,"
        " not an absolute path: '/a.sh'",
    ],
    'handler home': [
        "jobs.ini:4: [job a] handler: must be a path relative to the job's files "
        "('~' is not expanded): '~/a.sh'",
    ],
    'handler backslash': [
        "jobs.ini:4: [job a] handler: use '/' to separate folders, not '\\': 'a\\\\b"
        ".sh'",
    ],
    'handler folder': [
        "jobs.ini:4: [job a] handler: must name a file, not a folder: 'src/'",
    ],
    'handler dotdot': [
        "jobs.ini:4: [job a] handler: must stay inside the job's files: '..' is n"
        "ot allowed: 'a/../b.sh'",
    ],
    'handler dot': [
        "jobs.ini:4: [job a] handler: must name a file inside the job's files: '."
        "/.'",
    ],
    'handler missing, no source': [
        "jobs.ini:3: [job a] handler: missing: name the script to run, e.g. 'hand"
        "ler = run.sh'",
        "jobs.ini:3: [job a] needs exactly one of 's3_uri' or 'local_path' (where"
        " the job's files are)",
    ],
    'both sources': [
        "jobs.ini:6: [job a] s3_uri: both 's3_uri' and 'local_path' are set (the "
        'other on line 5): set exactly one',
    ],
    's3 empty': [
        'jobs.ini:5: [job a] s3_uri: is empty: expected s3://BUCKET/KEY-OR-PREFIX',
    ],
    's3 http': [
        'jobs.ini:5: [job a] s3_uri: expected s3://BUCKET/KEY-OR-PREFIX, not an H'
        "TTP(S) URL: 'http://my-bucket/a'",
    ],
    's3 https': [
        'jobs.ini:5: [job a] s3_uri: expected s3://BUCKET/KEY-OR-PREFIX, not an H'
        "TTP(S) URL: 'HTTPS://my-bucket/a'",
    ],
    's3 uppercase scheme': [
        'jobs.ini:5: [job a] s3_uri: expected s3://BUCKET/KEY-OR-PREFIX (lowercas'
        "e 's3://'): 'S3://my-bucket/a'",
    ],
    's3 other': [
        "jobs.ini:5: [job a] s3_uri: expected s3://BUCKET/KEY-OR-PREFIX, got 'my-"
        "bucket/a'",
    ],
    's3 no bucket': [
        'jobs.ini:5: [job a] s3_uri: the bucket name is missing: expected s3://BU'
        "CKET/KEY-OR-PREFIX, got 's3:///a'",
    ],
    's3 whole bucket': [
        "jobs.ini:5: warning: [job a] s3_uri: 's3://my-bucket/' names the whole b"
        'ucket: every object in it will be staged (add a key or prefix to stage l'
        'ess)',
    ],
    'bucket short': [
        "jobs.ini:5: [job a] s3_uri: invalid bucket name 'ab': must be 3 to 63 ch"
        "aracters: lowercase letters, digits, '.' and '-', starting and ending wi"
        'th a letter or digit (it has 2)',
    ],
    'bucket 63': [
    ],
    'bucket 64': [
        "jobs.ini:5: [job a] s3_uri: invalid bucket name 'bbbbbbbbbbbbbbbbbbbbbbb"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb': must be 3 to 63 characters: "
        "lowercase letters, digits, '.' and '-', starting and ending with a lette"
        'r or digit (it has 64)',
    ],
    'bucket chars': [
        "jobs.ini:5: [job a] s3_uri: invalid bucket name 'my_bucket': must be 3 t"
        "o 63 characters: lowercase letters, digits, '.' and '-', starting and en"
        'ding with a letter or digit',
    ],
    'bucket dot dash': [
        "jobs.ini:5: [job a] s3_uri: invalid bucket name 'ab.-cd': must not conta"
        "in '..', '.-' or '-.'",
    ],
    'bucket dash dot': [
        "jobs.ini:5: [job a] s3_uri: invalid bucket name 'ab-.cd': must not conta"
        "in '..', '.-' or '-.'",
    ],
    'bucket ip': [
        "jobs.ini:5: [job a] s3_uri: invalid bucket name '10.0.0.1': must not be "
        'formatted as an IP address',
    ],
    'key 1024': [
    ],
    'key 1025': [
        'jobs.ini:5: [job a] s3_uri: the key is longer than 1024 bytes',
    ],
    'key dotdot last': [
        "jobs.ini:5: [job a] s3_uri: the key has a '.' or '..' path segment: 's3:"
        "//my-bucket/a/..'",
    ],
    'key dotdot before slash': [
        "jobs.ini:5: [job a] s3_uri: the key has a '.' or '..' path segment: 's3:"
        "//my-bucket/a/../'",
    ],
    'key dot': [
        "jobs.ini:5: [job a] s3_uri: the key has a '.' or '..' path segment: 's3:"
        "//my-bucket/a/./b'",
    ],
    'key empty segment': [
        "jobs.ini:5: [job a] s3_uri: the key has an empty path segment ('//'): 's"
        "3://my-bucket/a//b'",
    ],
    'key comma': [
        "jobs.ini:5: [job a] s3_uri: the key contains ',', which would split the "
        "staging functions' S3 read permission (JobSourceObjectArns, a comma-sepa"
        'rated CloudFormation list) into another ARN: rename the objects (or the '
        "prefix) without ',': 's3://my-bucket/a,b'",
    ],
    'key quote and backslash': [
        'jobs.ini:5: [job a] s3_uri: the key contains a double quote (") and a ba'
        "ckslash (\\), which samconfig.toml's parameter_overrides cannot carry to "
        '`sam deploy` unchanged (the SAM CLI unescapes them): rename the objects '
        '(or the prefix) without them: \'s3://my-bucket/a"b\\\\c\'',
    ],
    'key backslash': [
        'jobs.ini:5: [job a] s3_uri: the key contains a backslash (\\), which samc'
        "onfig.toml's parameter_overrides cannot carry to `sam deploy` unchanged "
        '(the SAM CLI unescapes them): rename the objects (or the prefix) without'
        " them: 's3://my-bucket/a\\\\c'",
    ],
    'local empty': [
        'jobs.ini:5: [job a] local_path: is empty: give a file or folder, relativ'
        'e to the config file or absolute',
    ],
    'local absolute missing': [
        "jobs.ini:5: [job a] local_path: does not exist: '/no/such/dir'",
    ],
    'local relative missing': [
        "jobs.ini:5: [job a] local_path: does not exist: 'nowhere' (resolved to '"
        "<tmp>/nowhere')",
    ],
    'local handler is a folder': [
        "jobs.ini:5: [job a] local_path: the handler 'sub' is a folder, not a fil"
        "e: 'proj' (resolved to '<tmp>/proj')",
    ],
    'local handler not in folder': [
        "jobs.ini:5: [job a] local_path: the handler 'other.sh' is not a file in "
        "it: 'proj' (resolved to '<tmp>/proj')",
    ],
    'local single file': [
        "jobs.ini:5: [job a] local_path: is a single file 'single.sh', so the han"
        "dler must be 'single.sh' (got 'run.sh'); point local_path at a folder to"
        ' run another file',
    ],
    'local fifo': [
        "jobs.ini:5: [job a] local_path: is neither a file nor a folder: 'fifo' ("
        "resolved to '<tmp>/fifo')",
    ],
    'local symlink loop': [
        "jobs.ini:5: [job a] local_path: cannot use 'loop': Symlink loop from '<t"
        "mp>/loop'",
    ],
    'local handler name too long': [
        "jobs.ini:5: [job a] local_path: the handler 'xxxxxxxxxxxxxxxxxxxxxxxxxxx"
        'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'
        'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'
        'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' is not a file"
        " in it: 'proj' (resolved to '<tmp>/proj')",
    ],
    'wait not a number': [
        'jobs.ini:6: [job a] wait_time: must be an integer from 1 to 240 (seconds'
        "), got 'x'",
    ],
    'wait inline comment': [
        'jobs.ini:6: [job a] wait_time: must be an integer from 1 to 240 (seconds'
        "), got '10 # s' (inline comments are not supported: put comments on thei"
        'r own line)',
    ],
}


def make_job_files(root: Path) -> None:
    """The files the local_path cases point at."""
    (root / "proj" / "sub").mkdir(parents=True)
    (root / "proj" / "run.sh").write_text("true\n")
    (root / "single.sh").write_text("true\n")
    os.mkfifo(root / "fifo")
    os.symlink(root / "loop2", root / "loop")
    os.symlink(root / "loop", root / "loop2")


@pytest.mark.parametrize("name", list(EXACT_CASES))
def test_exactly_what_a_user_sees(tmp_path, name):
    make_job_files(tmp_path)
    try:
        config = parse_jobs_config(EXACT_CASES[name], PATH, tmp_path)
        shown = [str(w) for w in config.warnings]
    except ConfigError as exc:
        shown = [str(p) for p in exc.problems] + [str(w) for w in exc.warnings]
    assert [s.replace(str(tmp_path), "<tmp>") for s in shown] == EXACT_EXPECTED[name]


# ---------------------------------------------------------------------------------------------
# Whole-file problems, word for word


def only_file_problem(path) -> Problem:
    with pytest.raises(ConfigError) as info:
        load_jobs_config(path)
    (problem,) = info.value.problems
    assert (problem.path, problem.line, problem.section, problem.key) == (
        os.fsdecode(path), None, None, None
    )
    return problem


def test_what_cannot_be_read_is_said_plainly(tmp_path):
    assert only_file_problem(tmp_path / "nope.ini").message == "no such file"
    assert only_file_problem(tmp_path).message == "is a folder, not a jobs config file"
    os.mkfifo(tmp_path / "fifo.ini")
    assert only_file_problem(tmp_path / "fifo.ini").message == "is not a regular file"
    # An OSError says its strerror, not "[Errno 36] ..."; a ValueError says itself.
    long_name = str(tmp_path / ("x" * 300))
    assert only_file_problem(long_name).message == "cannot read the file: File name too long"
    assert only_file_problem("jobs\x00.ini").message == "cannot read the file: embedded null byte"


@pytest.mark.parametrize(
    "error, message",
    [
        (PermissionError(13, "Permission denied"), "permission denied: cannot read the file"),
        # a folder that appears between the check and the open
        (IsADirectoryError(21, "Is a directory"), "is a folder, not a jobs config file"),
        (OSError(5, "Input/output error"), "cannot read the file: Input/output error"),
    ],
)
def test_errors_opening_the_file(tmp_path, monkeypatch, error, message):
    path = tmp_path / "jobs.ini"
    path.write_text(GOOD_ORDER + GOOD_JOB_A)

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(config_module, "open", refuse, raising=False)
    assert only_file_problem(path).message == message


def test_the_size_limit_is_one_mib(tmp_path):
    path = tmp_path / "jobs.ini"
    text = GOOD_ORDER + GOOD_JOB_A
    limit = 1024 * 1024
    path.write_text(text + "#" * (limit - len(text)))  # exactly 1 MiB: fine
    assert [j.name for j in load_jobs_config(path).jobs] == ["a"]
    path.write_text(text + "#" * (limit - len(text) + 1))
    assert only_file_problem(path).message == "is larger than 1024 KiB: not a jobs config file"
    # The same limit for text given directly (a BOM aside).
    padded = text + "#" * (limit - len(text))
    assert parse_jobs_config("\ufeff" + padded, PATH, tmp_path).jobs[0].name == "a"
    with pytest.raises(ConfigError) as info:
        parse_jobs_config(padded + "#", PATH, tmp_path)
    assert info.value.problems == (
        Problem(PATH, None, None, None, "is larger than 1024 KiB: not a jobs config file"),
    )


def test_not_utf8_says_which_byte_on_which_line(tmp_path):
    path = tmp_path / "jobs.ini"
    path.write_bytes(b"\n[order]\nsequential = \xe9\n")
    with pytest.raises(ConfigError) as info:
        load_jobs_config(path)
    assert info.value.problems == (
        Problem(
            str(path),
            3,
            None,
            None,
            "not a UTF-8 text file (undecodable byte 0xe9): the jobs config must be an INI "
            "text file",
        ),
    )


@pytest.mark.parametrize(
    "text, message",
    [
        (b"[order]\n", "not a text config file"),
        (None, "not a text config file"),
        ("[order]\nsequential = a\x00\n", "contains NUL bytes: a binary file, not an INI jobs "
         "config"),
    ],
)
def test_text_that_is_no_config_text(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        parse_jobs_config(text, PATH, tmp_path)
    assert info.value.problems == (Problem(PATH, None, None, None, message),)
    assert info.value.warnings == ()


def test_local_paths_are_relative_to_the_config_file_by_default(tmp_path):
    make_job_files(tmp_path)
    text = "[order]\nsequential = a\n[job a]\nhandler = run.sh\nlocal_path = proj\n"
    config = parse_jobs_config(text, str(tmp_path / "jobs.ini"))
    assert config.jobs[0].local_path == str(tmp_path / "proj")


def test_a_failing_config_still_carries_its_warnings(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse(GOOD_ORDER + GOOD_JOB_A + "wait_time = x\n[job b]\nhandler = r.sh\n"
              "s3_uri = s3://my-bucket\n", tmp_path)
    assert [p.line for p in info.value.problems] == [7]
    assert [(w.line, w.key) for w in info.value.warnings] == [(8, None), (10, "s3_uri")]


def test_a_folder_that_cannot_be_entered_is_not_readable(tmp_path, monkeypatch):
    make_job_files(tmp_path)
    real_access = os.access
    monkeypatch.setattr(
        config_module.os, "access", lambda path, mode: mode != os.X_OK and real_access(path, mode)
    )
    problem = only_error(GOOD_ORDER + "[job a]\nhandler = run.sh\nlocal_path = proj\n", tmp_path)
    assert str(problem).replace(str(tmp_path), "<tmp>") == (
        "jobs.ini:6: [job a] local_path: is not readable: 'proj' (resolved to '<tmp>/proj')"
    )


# ---------------------------------------------------------------------------------------------
# A graph, retries, on_failure (issue 12): what a seed config means is unchanged


def graph_config(order="parallel", a="", b="", c="", d="", options=""):
    jobs = {"a": a, "b": b, "c": c, "d": d}
    return (f"[order]\n{order} = a, b, c, d\n{options}\n" + "".join(
        f"[job {n}]\nhandler = run.sh\ns3_uri = s3://my-bucket/{n}/\n{extra}\n" for n, extra in jobs.items()))


def test_a_diamond_with_retries_and_on_failure_is_read(tmp_path):
    config = parse(graph_config(b="depends_on = a\nretries = 2\nretry_on = 137, node_fail, 137\n",
                                c="depends_on = a", d="depends_on = b,c", options="on_failure = finish"), tmp_path)
    jobs = {j.name: j for j in config.jobs}
    assert [jobs[n].depends_on for n in "abcd"] == [(), ("a",), ("a",), ("b", "c")]
    assert (jobs["b"].retries, jobs["b"].retry_on) == (2, ("137", "NODE_FAIL"))
    assert config.on_failure == "finish" and parse(graph_config(), tmp_path).on_failure == "cancel"


def test_graph_problems_are_named_with_their_line(tmp_path):
    text = graph_config(a="depends_on = a", b="depends_on = zz, dd", c="depends_on = d", d="depends_on = c")
    text += "[job e]\nhandler = run.sh\ns3_uri = s3://my-bucket/e/\n"
    text = text.replace("depends_on = zz, dd", "depends_on = zz, e, dd")
    problems = errors_of(text, tmp_path)
    shown = [f"{p.line}: {p.message}" for p in problems]
    assert shown == [
        "7: job 'a' cannot depend on itself",
        "11: job 'zz' has no [job zz] section",
        "11: job 'e' is not listed in [order] parallel, so it never runs and 'b' would wait for ever",
        "11: job 'dd' has no [job dd] section",
        "15: the jobs wait for each other in a cycle: c -> d -> c (each waits for the next): none of them could start",
    ]


def test_a_longer_cycle_is_printed_whole(tmp_path):
    problem = only_error(graph_config(a="depends_on = c", b="depends_on = a", c="depends_on = b"), tmp_path)
    assert_at(problem, 7, "job a", "depends_on", "a -> c -> b -> a")


def test_depends_on_needs_a_parallel_order(tmp_path):
    problem = only_error(graph_config(order="sequential", b="depends_on = a"), tmp_path)
    assert_at(problem, 11, "job b", "depends_on", "needs [order] parallel: a sequential run is already a chain")


@pytest.mark.parametrize("key, value, fragment", [
    ("retries", "11", "must be an integer from 0 to 10"),
    ("retries", "-1", "must be an integer from 0 to 10"),
    ("retries", "two", "must be an integer from 0 to 10"),
    ("retry_on", "256", "'256' is not an exit code a retry can follow (1 to 255)"),
    ("retry_on", "0", "'0' is not an exit code"),
    ("retry_on", "NODE FAIL", "neither an exit code nor a scheduler state word"),
    ("retry_on", "137,", "empty item in the list"),
    ("depends_on", "b,,c", "doubled comma after 'b'"),
    ("depends_on", "b, b", "job 'b' is listed more than once"),
])
def test_bad_workflow_values_are_named(tmp_path, key, value, fragment):
    extra = f"{key} = {value}\n" + ("retries = 1\n" if key == "retry_on" else "")
    problem = only_error(graph_config(a=extra), tmp_path)
    assert_at(problem, 7, "job a", key, fragment)


def test_retry_on_without_retries_is_a_warning_and_on_failure_a_word(tmp_path):
    config = parse(graph_config(a="retry_on = 137"), tmp_path)
    (warning,) = config.warnings
    assert warning.key == "retry_on" and "has no effect without 'retries = N'" in warning.message
    problem = only_error(graph_config(options="on_failure = continue"), tmp_path)
    assert_at(problem, 3, "order", "on_failure", "must be one of cancel, finish")


def test_validate_shows_a_graphs_levels(tmp_path):
    config = parse(graph_config(b="depends_on = a", c="depends_on = a", d="depends_on = b, c"), tmp_path)
    assert config.summary() == (f"{PATH}: 4 jobs in a graph of 3 levels (each job after those it depends on): "
                                "0: a; 1: b, c; 2: d")
