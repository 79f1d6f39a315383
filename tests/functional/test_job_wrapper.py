"""The job wrapper (run.sh) run for real by a local bash: the "scheduler" here runs the batch
script it is given at once, as a node would, then prints an id."""

from pathlib import Path

import pytest

from stepcluster.config import parse_jobs_config
from stepcluster.plan import build_plan

from functional.test_service import FakeScheduler, local_service


class RunsTheWrapper(FakeScheduler):
    def submit_argv(self, script, *, job_name, workdir, stdout, stderr, request=()):
        return ["bash", "-c", 'bash "$1" > "$2" 2> "$3"; echo "id-$4"', "submit",
                script, stdout, stderr, job_name]


@pytest.mark.parametrize("handler, body, code", [
    ("--version", "echo handler ran: $0\nexit 3\n", 3),                         # run with bash
    ("-x.sh", "#!/bin/bash\necho handler ran: executable\nexit 4\n", 4),       # run as executable
])
def test_a_handler_named_like_an_option_runs_and_its_exit_code_is_recorded(tmp_path, handler, body, code):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / handler).write_text(body)
    text = f"[order]\nsequential = a\n\n[job a]\nhandler = {handler}\nlocal_path = job\n"
    plan = build_plan(parse_jobs_config(text, str(tmp_path / "jobs.ini"), tmp_path), tmp_path / "plan")
    scheduler = RunsTheWrapper(tmp_path)
    svc = local_service(tmp_path, plan, scheduler)
    run = svc.prepare_head_node(svc.create_cluster(
        {"input": {"cluster_name": "c1"}, "execution": "e", "plan_digest": plan.digest}))
    run = svc.submit_jobs(run)
    job_dir = Path(run["cluster"]["run_dir"], "jobs", "a")
    assert "handler ran:" in (job_dir / "stdout").read_text()
    assert "GNU" not in (job_dir / "stdout").read_text()   # not `bash --version`, `head --version`
    assert (job_dir / "result").read_text().split()[:2] == [str(code), "0"]
    run = svc.poll_jobs(run)
    assert run["jobs"]["a"]["state"] == "FAILED" and run["jobs"]["a"]["exit_code"] == code


def test_a_handler_that_cannot_run_fails_the_job(tmp_path):
    """Its file gone from the staged folder (removed after staging): 127, never a success."""
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "--help").write_text("exit 0\n")
    text = "[order]\nsequential = a\n\n[job a]\nhandler = --help\nlocal_path = job\n"
    plan = build_plan(parse_jobs_config(text, str(tmp_path / "jobs.ini"), tmp_path), tmp_path / "plan")
    # FakeScheduler submits without running: the test runs the wrapper itself
    svc = local_service(tmp_path, plan, FakeScheduler(tmp_path))
    run = svc.submit_jobs(svc.prepare_head_node(svc.create_cluster(
        {"input": {"cluster_name": "c1"}, "execution": "e", "plan_digest": plan.digest})))
    job_dir = Path(run["cluster"]["run_dir"], "jobs", "a")
    (job_dir / "src" / "--help").unlink()
    import subprocess
    done = subprocess.run(["bash", str(job_dir / "run.sh")], capture_output=True, text=True)
    assert done.returncode == 127 and "not a file" in done.stderr
    assert (job_dir / "result").read_text().split()[:2] == ["127", "0"]
