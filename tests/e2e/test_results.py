"""Job data in and out: sources from an S3 prefix (the local stand-in folder for S3), results
(stdout, stderr, exit code, output folder) kept in the artifacts bucket before the cluster goes,
also for a failed job; written back to a local folder after run-local."""

import functools
import json

import boto3
import pytest

from stepcluster.local import runner

from .conftest import remote_exists

pytestmark = pytest.mark.e2e
run_local = functools.partial(runner.run_local, timeout=150)
SCHEDULERS = ["slurm", "sge"]


def objects() -> dict:
    s3 = boto3.client("s3")
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=runner.ARTIFACTS_BUCKET):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = s3.get_object(Bucket=runner.ARTIFACTS_BUCKET, Key=obj["Key"])["Body"].read()
    return found


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_sources_from_an_s3_prefix_and_results_kept_after_the_cluster(
        scheduler, local_cluster, tmp_path, head_node):
    # The S3 stand-in: s3://inputs/project/ with nested folders.
    project = tmp_path / "s3" / "inputs" / "project"
    (project / "bin").mkdir(parents=True)
    (project / "data" / "deep").mkdir(parents=True)
    (project / "bin" / "run.sh").write_text(
        "#!/bin/bash\nset -e\necho \"reading $(cat data/deep/numbers.txt | wc -l) numbers\"\n"
        "sort -n data/deep/numbers.txt > \"$STEPCLUSTER_OUTPUT/sorted.txt\"\n"
        "mkdir -p \"$STEPCLUSTER_OUTPUT/plots\" && echo png > \"$STEPCLUSTER_OUTPUT/plots/a.png\"\n"
        "echo 'a warning' >&2\n")
    (project / "data" / "deep" / "numbers.txt").write_text("3\n1\n2\n")
    local_job = tmp_path / "local"
    local_job.mkdir()
    (local_job / "fail.sh").write_text("echo partial > $STEPCLUSTER_OUTPUT/partial.txt\n"
                                       "echo 'fatal: no convergence' >&2\nexit 4\n")
    config = tmp_path / "jobs.ini"
    config.write_text("[order]\nsequential = sorter, failer\n\n"
                      "[job sorter]\nhandler = bin/run.sh\ns3_uri = s3://inputs/project/\nwait_time = 1\n\n"
                      "[job failer]\nhandler = fail.sh\nlocal_path = local\nwait_time = 1\n")
    seen = {}
    report = run_local(str(config), "data", scheduler=scheduler, cluster=local_cluster,
                       s3_dir=tmp_path / "s3", artifacts_dir=tmp_path / "artifacts",
                       on_finish=lambda r: seen.update(objects=objects()))

    assert report.status == "FAILED" and "fatal: no convergence" in report.cause
    execution = report.execution_arn.split(":")[-1]
    kept = seen["objects"]
    assert kept[f"{execution}/sorter/output/sorted.txt"] == b"1\n2\n3\n"
    assert kept[f"{execution}/sorter/output/plots/a.png"] == b"png\n"
    assert kept[f"{execution}/sorter/stdout"] == b"reading 3 numbers\n"
    assert kept[f"{execution}/sorter/stderr"] == b"a warning\n"
    assert kept[f"{execution}/sorter/exit_code"].split()[:2] == [b"0", b"0"]
    # The failed job's files are kept too.
    assert kept[f"{execution}/failer/output/partial.txt"] == b"partial\n"
    assert kept[f"{execution}/failer/exit_code"].split()[0] == b"4"
    assert b"no convergence" in kept[f"{execution}/failer/stderr"]
    manifest = json.loads(kept[f"{execution}/manifest.json"])
    assert manifest["jobs"]["failer"]["state"] == "FAILED"
    assert manifest["jobs"]["sorter"]["results"] == f"s3://{runner.ARTIFACTS_BUCKET}/{execution}/sorter/"
    rows = {j["name"]: j for j in report.jobs}
    assert rows["sorter"]["results"] == manifest["jobs"]["sorter"]["results"]
    # the execution's own output (its last run record) names each job's results too
    assert report.events and any(f'"results":"{manifest["jobs"]["failer"]["results"]}"' in
                                 (e.get("stateExitedEventDetails", {}).get("output") or "").replace(" ", "")
                                 for e in report.events)
    # Written back locally with the same keys; the head node's copy is gone.
    assert (tmp_path / "artifacts" / execution / "sorter" / "output" / "sorted.txt").read_text() == "1\n2\n3\n"
    assert not remote_exists(head_node, f"/home/hpc/stepcluster-runs/{execution}")


def test_a_missing_s3_dir_is_a_clear_error(local_cluster, write_config, tmp_path):
    config = write_config("sequential", {"a": "true"})
    with pytest.raises(FileNotFoundError, match="s3-dir"):
        run_local(config, "x", cluster=local_cluster, s3_dir=tmp_path / "nope")


def test_the_head_node_can_download_the_jobs_files_itself(local_cluster, tmp_path):
    """StagingPath head-node: the function lists and presigns, the head node fetches (here from
    moto's S3 served on 127.0.0.1); a local_path package goes once to the artifacts bucket."""
    project = tmp_path / "s3" / "inputs" / "proj"
    (project / "bin").mkdir(parents=True)
    # a directive in a file only the head node has: read there (directive_lines_script)
    (project / "bin" / "run.sh").write_text("#!/bin/bash\n#SBATCH --ntasks=2\necho \"$SLURM_NTASKS\"\n"
                                            "cat bin/../data.txt\n")
    (project / "data.txt").write_text("fetched by the head node\n")
    local_job = tmp_path / "local"
    local_job.mkdir()
    (local_job / "run.sh").write_text("echo local package\n")
    config = tmp_path / "jobs.ini"
    config.write_text("[order]\nparallel = remote, packaged\n\n"
                      "[job remote]\nhandler = bin/run.sh\ns3_uri = s3://inputs/proj\nwait_time = 1\n\n"
                      "[job packaged]\nhandler = run.sh\nlocal_path = local\nwait_time = 1\n")
    seen = {}
    report = run_local(str(config), "fetch", cluster=local_cluster, staging="head-node",
                       s3_dir=tmp_path / "s3", on_finish=lambda r: seen.update(objects=objects()))
    assert report.status == "SUCCEEDED", report.cause
    execution = report.execution_arn.split(":")[-1]
    assert seen["objects"][f"{execution}/remote/stdout"] == b"2\nfetched by the head node\n"
    assert seen["objects"][f"{execution}/packaged/stdout"] == b"local package\n"
    assert [k for k in seen["objects"] if k.startswith("packages/")] != []
