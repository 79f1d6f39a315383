"""The jobs config's resource keys: their values, and what each scheduler is asked for."""

from __future__ import annotations

import pytest

from stepcluster.config import parse_jobs_config
from stepcluster.errors import ConfigError
from stepcluster.plan import build_plan, load_plan
from stepcluster.resources import Resources, parse_memory, parse_options, parse_time_limit
from stepcluster.schedulers import get_scheduler

G = 1024 * 1024  # KiB


@pytest.mark.parametrize("text, seconds", [
    ("90", 5400), ("01:30:00", 5400), ("2-00:00:00", 172800), ("0:00:20", 20), ("100:00:00", 360000),
])
def test_time_limits(text, seconds):
    assert parse_time_limit(text) == (seconds, None)


@pytest.mark.parametrize("text", ["0", "1:60:00", "1:30", "1h", "-5", "367-00:00:00", ""])
def test_bad_time_limits(text):
    value, problem = parse_time_limit(text)
    assert value is None and problem


@pytest.mark.parametrize("text, kib", [("4G", 4 * G), ("512M", 512 * 1024), ("1T", 1024 * G), ("100K", 100),
                                       ("4GB", 4 * G), ("4g", 4 * G)])
def test_memory(text, kib):
    assert parse_memory(text) == (kib, None)


@pytest.mark.parametrize("text", ["4", "4X", "0G", "4.5G", "2000T", "G"])
def test_bad_memory(text):
    assert parse_memory(text)[0] is None


def test_options_split_like_a_shell_and_never_reach_one():
    assert parse_options('--gres=gpu:1 --comment="a; rm -rf ~"') == (("--gres=gpu:1", "--comment=a; rm -rf ~"), None)
    assert parse_options('--comment="open')[0] is None
    assert parse_options("gpu")[1].startswith("must start with an option")


RESOURCES = Resources(nodes=1, tasks=4, cpus_per_task=2, memory_kib=4 * G, time_limit=5400, queue="long")


def test_slurm_translation():
    assert get_scheduler("slurm").request_argv(RESOURCES) == [
        "--nodes=1", "--ntasks=4", "--cpus-per-task=2", "--mem=4G", "--time=1:30:00", "--partition=long"]
    assert get_scheduler("slurm").request_argv(Resources(time_limit=90000)) == ["--time=1-1:00:00"]


def test_grid_engine_translation_gives_slots_through_the_parallel_environment_and_memory_per_slot():
    assert get_scheduler("sge").request_argv(RESOURCES) == [
        "-pe", "smp", "8", "-l", "h_rt=5400,h_vmem=512M", "-q", "long"]
    assert get_scheduler("sge").request_argv(Resources(memory_kib=1024 * G)) == ["-l", "h_vmem=1024G"]  # no T unit
    problems = get_scheduler("sge").request_problems(Resources(nodes=2, tasks=4))
    assert len(problems) == 1 and "nodes = 2 cannot be expressed" in problems[0]


def test_torque_translation():
    assert get_scheduler("torque").request_argv(RESOURCES) == [
        "-l", "nodes=1:ppn=8,mem=4194304kb,walltime=1:30:00", "-q", "long"]
    assert get_scheduler("torque").request_argv(Resources(nodes=2, tasks=4))[:2] == ["-l", "nodes=2:ppn=2"]
    assert "do not divide evenly over 2 nodes" in get_scheduler("torque").request_problems(Resources(nodes=2, tasks=3))[0]


@pytest.mark.parametrize("scheduler, options", [("slurm", ("-n", "4")), ("slurm", ("--ntasks=4",)),
                                                ("sge", ("-pe", "mpi", "4")), ("torque", ("-q", "x"))])
def test_a_key_set_twice_is_refused(scheduler, options):
    resources = Resources(tasks=2, queue="q", scheduler_options=options)
    assert any("already sets it" in p for p in get_scheduler(scheduler).request_problems(resources))


def test_keys_reach_the_plan_and_a_seed_config_keeps_its_digest(tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "run.sh").write_text("echo\n")
    seed = "[order]\nsequential = a\n\n[job a]\nhandler = run.sh\nlocal_path = job\n"
    plain = build_plan(parse_jobs_config(seed, str(tmp_path / "jobs.ini"), tmp_path), tmp_path / "p1")
    assert "resources" not in (tmp_path / "p1" / "plan.json").read_text()
    text = seed + "tasks = 4\nmemory = 4G\ntime_limit = 90\nscheduler_options = --gres=gpu:1\n"
    plan = build_plan(parse_jobs_config(text, str(tmp_path / "jobs.ini"), tmp_path), tmp_path / "p2")
    assert plan.digest != plain.digest
    assert load_plan(tmp_path / "p2").jobs[0].resources == Resources(
        tasks=4, memory_kib=4 * G, time_limit=5400, scheduler_options=("--gres=gpu:1",))


def test_bad_values_are_problems_with_their_line(tmp_path):
    text = ("[order]\nsequential = a\n\n[job a]\nhandler = run.sh\ns3_uri = s3://bucket/a/\n"
            "nodes = 0\nmemory = 4 gigs\ntime_limit = 1:99:00\nqueue = a b\nscheduler_options = \"x\n")
    with pytest.raises(ConfigError) as caught:
        parse_jobs_config(text, "jobs.ini", tmp_path)
    assert [(p.line, p.key) for p in caught.value.problems] == [
        (7, "nodes"), (8, "memory"), (9, "time_limit"), (10, "queue"), (11, "scheduler_options")]


@pytest.mark.parametrize("text, count", [("1-8", 8), ("1-100:2%5", 50), ("1,3,7", 3), ("1-3,10", 4), ("0", 1)])
def test_arrays(text, count):
    from stepcluster.resources import array_indices, parse_array

    spec, problem = parse_array(text)
    assert problem is None and len(array_indices(spec)) == count


@pytest.mark.parametrize("text", ["5-1", "1-200000", "x", "1-8%", "1-8%0", "1-8:0", ""])
def test_bad_arrays(text):
    from stepcluster.resources import parse_array

    assert parse_array(text)[0] is None


def test_array_translation():
    assert get_scheduler("slurm").request_argv(Resources(array="1-100:2%5")) == ["--array=1-100:2%5"]
    assert get_scheduler("sge").request_argv(Resources(array="1-100:2%5")) == ["-t", "1-100:2", "-tc", "5"]
    assert get_scheduler("torque").request_argv(Resources(array="1,3,7%2")) == ["-t", "1,3,7%2"]
    assert "one range of task indices from 1" in get_scheduler("sge").request_problems(Resources(array="1,3"))[0]
    assert "takes no step" in get_scheduler("torque").request_problems(Resources(array="1-9:2"))[0]


def test_an_arrays_tasks_speak_for_it_in_squeue():
    from stepcluster.schedulers import Category, CommandOutput

    slurm = get_scheduler("slurm")
    rows = "50_1|COMPLETED|1|1:00|0|None\n50_2|RUNNING|1|1:00|0|None\n50_[3-8%2]|PENDING|1|1:00|0|JobArrayTaskLimit\n"
    assert slurm.parse_status(CommandOutput(rows), ["50"])["50"].category == Category.RUNNING
    rows = "50_1|COMPLETED|1|1:00|0|None\n50_2|TIMEOUT|1|1:00|0|TimeLimit\n"
    status = slurm.parse_status(CommandOutput(rows), ["50"])["50"]
    assert status.category == Category.FAILED and status.limit == "time limit 0:01:00 (Slurm: TIMEOUT)"
    assert slurm.parse_status(CommandOutput("50_1|COMPLETED|1|1:00|0|None\n"), ["50"])["50"].category == \
        Category.SUCCEEDED
    assert slurm.parse_status(CommandOutput("51_1|RUNNING|1|1:00|0|None\n"), ["50"])["50"].category == \
        Category.MISSING


def test_a_failed_task_fails_the_array_and_every_task_must_succeed():
    from stepcluster.decisions import JobObservation, Limits, TaskTally, observe
    from stepcluster.record import JobRecord, JobState
    from stepcluster.schedulers import Category, JobStatus

    job, limits = JobRecord(state=JobState.RUNNING, job_id="50"), Limits(600)
    running = JobStatus("50", Category.RUNNING, "RUNNING")
    seen = observe(job, "sweep", JobObservation("100", "", running, TaskTally(8, 8, 4, 0)),
                   scheduler="slurm", now=200, limits=limits)
    assert seen.state == JobState.RUNNING and seen.tasks == {"total": 8, "started": 8, "ended": 4, "failed": 0}
    seen = observe(job, "sweep", JobObservation("100", "", running, TaskTally(8, 8, 6, 1, "150", "5", "3 0 150")),
                   scheduler="slurm", now=200, limits=limits)
    assert (seen.state, seen.exit_code, seen.tasks["failed_task"]) == (JobState.FAILED, 3, "5")
    assert seen.reason == "task 5 of 8 failed; 1 failed, 6 ended so far"
    done = observe(job, "sweep", JobObservation("100", "", JobStatus("50", Category.MISSING, ""), TaskTally(8, 8, 8, 0, "160")),
                   scheduler="slurm", now=200, limits=limits)
    assert done.state == JobState.SUCCEEDED
    # the scheduler's history says the array ended well, but two tasks left no record
    gone = observe(job, "sweep", JobObservation("100", "", JobStatus("50", Category.SUCCEEDED, "COMPLETED"),
                                                TaskTally(8, 8, 6, 0, "160")),
                   scheduler="slurm", now=200, limits=limits)
    assert gone.state == JobState.FAILED and "2 of 8 tasks recorded no exit code" in gone.reason
