"""Jobs get what they ask for, on the real Slurm and Grid Engine: the handler's own directives,
the config's resource keys (which win over them), and a failure that names the limit a job
passed, in the scheduler's words."""

import functools

import pytest

from stepcluster.local import runner
from stepcluster.schedulers import Category

from .test_workflows import jobs_by_name, scheduler_view

pytestmark = pytest.mark.e2e
run_local = functools.partial(runner.run_local, timeout=240)

# What a new user writes: the batch script, directives and all.
SLURM_SCRIPT = """
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=2   # two CPUs each
#SBATCH --time=00:00:20
echo "$SLURM_NTASKS $SLURM_CPUS_PER_TASK"; scontrol show job $SLURM_JOB_ID | grep -o 'TimeLimit=[^ ]*'
srun hostname | wc -l
"""
SGE_SCRIPT = """
#$ -pe smp 2
#$ -l h_rt=100
echo "$NSLOTS"; qstat -j $JOB_ID | grep -o 'h_rt=[0-9]*' | head -1
"""


def stdout_of(artifacts, report, job):
    execution = report.execution_arn.split(":")[-1]
    return (artifacts / execution / job / "stdout").read_text().split()


def test_slurm_honours_directives_config_keys_win_and_a_time_limit_fails_the_run_saying_so(
        local_cluster, write_config, tmp_path):
    config = write_config("parallel", {"directives": SLURM_SCRIPT, "keys": SLURM_SCRIPT,
                                       "too_long": "sleep 300"},
                          keys={"keys": {"tasks": "3", "cpus_per_task": "1", "time_limit": "5"},
                                "too_long": {"time_limit": "1"}})
    report = run_local(config, "res-slurm", scheduler="slurm", cluster=local_cluster,
                       artifacts_dir=tmp_path / "artifacts")

    jobs = jobs_by_name(report)
    # the directives, as sbatch would read them in the handler (20 s: Slurm counts minutes)
    assert jobs["directives"]["state"] == "SUCCEEDED"
    assert stdout_of(tmp_path / "artifacts", report, "directives") == ["2", "2", "TimeLimit=00:01:00", "2"]
    # the config's keys over the same directives
    assert stdout_of(tmp_path / "artifacts", report, "keys") == ["3", "1", "TimeLimit=00:05:00", "3"]
    # a job past its time limit: the run fails saying which limit, its value, Slurm's word
    assert report.status == "FAILED" and jobs["too_long"]["state"] == "FAILED"
    assert "Job 'too_long'" in report.cause
    assert "passing its time limit 0:01:00 (Slurm: TIMEOUT)" in report.cause, report.cause


def test_grid_engine_honours_directives_config_keys_win_and_a_time_limit_fails_the_run_saying_so(
        local_cluster, write_config, tmp_path):
    config = write_config("parallel", {"directives": SGE_SCRIPT, "keys": SGE_SCRIPT},
                          keys={"keys": {"tasks": "3", "time_limit": "0:01:40"}})
    report = run_local(config, "res-sge", scheduler="sge", cluster=local_cluster,
                       artifacts_dir=tmp_path / "artifacts")
    assert report.status == "SUCCEEDED", report.cause
    assert stdout_of(tmp_path / "artifacts", report, "directives") == ["2", "h_rt=100"]
    assert stdout_of(tmp_path / "artifacts", report, "keys") == ["3", "h_rt=100"]

    config = write_config("sequential", {"too_long": "sleep 120"}, keys={"too_long": {"time_limit": "0:00:05"}})
    report = run_local(config, "res-sge-limit", scheduler="sge", cluster=local_cluster)
    assert report.status == "FAILED" and jobs_by_name(report)["too_long"]["state"] == "FAILED"
    assert "passing its time limit h_rt=5" in report.cause, report.cause


@pytest.mark.parametrize("scheduler, directive", [("slurm", "#SBATCH --dependency=afterok:1"),
                                                  ("sge", "#$ -hold_jid 1")])
def test_a_directive_that_would_break_tracking_is_refused_before_anything_is_submitted(
        scheduler, directive, local_cluster, write_config):
    config = write_config("sequential", {"chained": f"{directive}\necho never"})
    report = run_local(config, "res-refused", scheduler=scheduler, cluster=local_cluster)
    assert report.status == "FAILED"
    job = jobs_by_name(report)["chained"]
    assert job["state"] == "FAILED" and job["job_id"] is None      # never reached the scheduler
    assert f"handler run.sh line 2: '{directive}'" in report.cause
    assert "the run's [order] decides when a job starts" in report.cause


@pytest.mark.parametrize("scheduler, said", [
    ("slurm", "passed its memory limit 50M (Slurm: 'exceeded memory limit ("),
    ("sge", "passed its memory limit h_vmem=50M per slot (Grid Engine sets it as the job's virtual-memory ulimit"),
])
def test_a_job_past_its_memory_limit_fails_the_run_saying_so(scheduler, said, local_cluster, write_config):
    """The rig enforces memory: Slurm's OverMemoryKill (no cgroups here) kills the job; Grid
    Engine's h_vmem is a ulimit, so the allocation fails inside the job."""
    config = write_config("sequential", {"hungry": 'python3 -c "x = bytearray(300 * 2**20); import time; time.sleep(20)"'},
                          keys={"hungry": {"memory": "50M"}})
    report = run_local(config, "res-mem", scheduler=scheduler, cluster=local_cluster)
    assert report.status == "FAILED" and jobs_by_name(report)["hungry"]["state"] == "FAILED"
    assert said in report.cause, report.cause


SWEEP = """
echo "task $STEPCLUSTER_TASK_ID of the sweep"
echo "value $(( STEPCLUSTER_TASK_ID * STEPCLUSTER_TASK_ID ))" > "$STEPCLUSTER_OUTPUT/value.txt"
if [ "$STEPCLUSTER_TASK_ID" = 5 ]; then sleep 3; echo "task 5: diverged" >&2; exit 3; fi
sleep 1
"""


@pytest.mark.parametrize("scheduler, index", [("slurm", "SLURM_ARRAY_TASK_ID"), ("sge", "SGE_TASK_ID")])
def test_an_array_of_eight_with_one_failing_task_names_it_and_keeps_the_others_results(
        scheduler, index, local_cluster, write_config, tmp_path):
    config = write_config("sequential", {"sweep": SWEEP + f'[ "${index}" = "$STEPCLUSTER_TASK_ID" ] || exit 9\n'},
                          keys={"sweep": {"array": "1-8"}})
    report = run_local(config, "res-array", scheduler=scheduler, cluster=local_cluster,
                       artifacts_dir=tmp_path / "artifacts")
    assert report.status == "FAILED"
    job = jobs_by_name(report)["sweep"]
    assert job["state"] == "FAILED" and job["exit_code"] == 3
    assert "task 5 of 8 failed" in report.cause and "with exit code 3" in report.cause, report.cause
    assert "task 5: diverged" in report.cause                     # that task's own stderr
    kept = tmp_path / "artifacts" / report.execution_arn.split(":")[-1] / "sweep"
    for task in (1, 2, 3, 4, 6, 7, 8):                            # each task's own record and results
        assert (kept / str(task) / "stdout").read_text() == f"task {task} of the sweep\n"
        assert (kept / str(task) / "output" / "value.txt").read_text() == f"value {task * task}\n"
        assert (kept / str(task) / "result").read_text().split()[:2] == ["0", "0"]
    assert (kept / "5" / "result").read_text().split()[:2] == ["3", "0"]


@pytest.mark.parametrize("scheduler", ["slurm", "sge"])
def test_a_cancelled_array_leaves_no_task_running(scheduler, local_cluster, write_config, head_node):
    config = write_config("parallel", {"sweep": "sleep 120", "breaks": "sleep 3; exit 1"},
                          keys={"sweep": {"array": "1-6%3"}})
    report = run_local(config, "res-array-cancel", scheduler=scheduler, cluster=local_cluster)
    assert report.status == "FAILED" and "Job 'breaks'" in report.cause
    sweep = jobs_by_name(report)["sweep"]
    assert sweep["state"] == "CANCELLED" and sweep["job_id"]
    # asked in the scheduler's own words, not through the adapter under test: no task listed
    listing = {"slurm": f"squeue --noheader --jobs={sweep['job_id']} --states=PENDING,RUNNING,COMPLETING --format=%i",
               "sge": f"qstat -u '*' | awk '$1 == {sweep['job_id']}'"}[scheduler]
    left = head_node.run_script(listing, check=False)
    assert left.exit_code == 0 and left.stdout.strip() == "", left.stdout
    assert scheduler_view(head_node, scheduler, [sweep["job_id"]])[sweep["job_id"]].category not in (
        Category.QUEUED, Category.RUNNING)


def test_the_resources_example_runs(local_cluster, tmp_path):
    report = run_local("examples/resources.ini", "res-example", scheduler="slurm", cluster=local_cluster,
                       artifacts_dir=tmp_path / "artifacts")
    assert report.status == "SUCCEEDED", report.cause
    summary = stdout_of(tmp_path / "artifacts", report, "summary")
    assert summary[:4] == ["solve", "with", "4", "ranks:"] and "10000" in summary


MPI_HELLO = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, sum = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Reduce(&rank, &sum, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) printf("%d ranks, sum of ranks %d\n", size, sum);
    MPI_Finalize();
    return 0;
}
"""


@pytest.mark.parametrize("scheduler", ["slurm", "sge"])
def test_an_mpi_job_runs_its_ranks_on_the_tasks_it_asked_for(scheduler, local_cluster, write_config, tmp_path):
    """Open MPI (Debian's) built and run in the job: ranks = tasks, whatever the scheduler."""
    config = write_config("sequential", {"mpi": 'mpicc -o hello hello.c && mpirun -np "${SLURM_NTASKS:-$NSLOTS}" ./hello'},
                          keys={"mpi": {"tasks": "3"}})
    (tmp_path / "jobs" / "mpi" / "hello.c").write_text(MPI_HELLO)
    report = run_local(config, "res-mpi", scheduler=scheduler, cluster=local_cluster,
                       artifacts_dir=tmp_path / "artifacts")
    assert report.status == "SUCCEEDED", report.cause
    assert " ".join(stdout_of(tmp_path / "artifacts", report, "mpi")) == "3 ranks, sum of ranks 3"
