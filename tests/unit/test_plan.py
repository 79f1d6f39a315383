"""The compiled plan and `stepcluster preprocess`: what `sam build && sam deploy` ship."""

import io
import json
import os
import tarfile
import tomllib

import pytest

from stepcluster import cli, definition
from stepcluster.config import load_jobs_config
from stepcluster.errors import ConfigError, PlanError
from stepcluster.plan import MAX_PAYLOAD_BYTES, build_plan, load_plan, pack_local_path
from stepcluster.preprocess import preprocess


def make_job(folder, name, files):
    for rel, content in files.items():
        path = folder / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return folder / name


def write_config(tmp_path, order="sequential", names=("a", "b")):
    for name in names:
        make_job(tmp_path, name, {"run.sh": f"echo {name}\n"})
    text = f"[order]\n{order} = {', '.join(names)}\n" + "".join(
        f"\n[job {n}]\nhandler = run.sh\nlocal_path = {n}\n" for n in names)
    (tmp_path / "jobs.ini").write_text(text)
    return tmp_path / "jobs.ini"


def test_same_content_gives_the_same_archive_and_digest(tmp_path):
    config = write_config(tmp_path)
    first = build_plan(load_jobs_config(config), tmp_path / "p1")
    os.utime(tmp_path / "a" / "run.sh", (1, 1))  # times do not matter, content does
    second = build_plan(load_jobs_config(config), tmp_path / "p2")
    assert first.digest == second.digest
    assert [j.archive for j in first.jobs] == [j.archive for j in second.jobs]

    (tmp_path / "b" / "run.sh").write_text("echo changed\n")
    third = build_plan(load_jobs_config(config), tmp_path / "p1")
    assert third.digest != first.digest
    assert third.jobs[0].archive == first.jobs[0].archive  # unchanged job, same package
    assert third.jobs[1].archive != first.jobs[1].archive
    # The stale package of b is gone; only what the plan names remains.
    assert sorted(p.name for p in (tmp_path / "p1" / "payloads").iterdir()) == \
        sorted(j.archive.split("/")[1] for j in third.jobs)


def test_plan_round_trips_and_keeps_order_and_wait_times(tmp_path):
    config = write_config(tmp_path, "parallel", ("z", "y", "x"))
    plan = build_plan(load_jobs_config(config), tmp_path / "plan")
    loaded = load_plan(tmp_path / "plan")
    assert loaded.names == ["z", "y", "x"] and loaded.order == "parallel"
    assert loaded.digest == plan.digest
    assert {j.wait_time for j in loaded.jobs} == {10}
    files = tarfile.open(fileobj=io.BytesIO(loaded.archive_bytes(loaded.jobs[0])), mode="r:gz").getnames()
    assert files == ["run.sh"]


def test_missing_plan_says_what_to_run(tmp_path):
    with pytest.raises(PlanError, match="stepcluster preprocess"):
        load_plan(tmp_path)


def test_symlink_leading_outside_the_folder_is_refused(tmp_path):
    job = make_job(tmp_path, "job", {"run.sh": "true\n"})
    (tmp_path / "secret.txt").write_text("no")
    (job / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ValueError, match="outside"):
        pack_local_path(job, "run.sh")


def test_symlink_inside_the_folder_is_packed_as_its_target(tmp_path):
    job = make_job(tmp_path, "job", {"run.sh": "true\n", "data/x.txt": "x"})
    (job / "alias.txt").symlink_to(job / "data" / "x.txt")
    names = tarfile.open(fileobj=io.BytesIO(pack_local_path(job, "run.sh")), mode="r:gz").getnames()
    assert names == ["alias.txt", "data/x.txt", "run.sh"]


def test_oversized_package_is_refused_with_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr("stepcluster.plan.MAX_PAYLOAD_BYTES", 10)
    job = make_job(tmp_path, "job", {"run.sh": "x" * 11})
    with pytest.raises(ValueError, match="more than"):
        pack_local_path(job, "run.sh")
    assert MAX_PAYLOAD_BYTES == 50 * 1024 * 1024


def test_preprocess_writes_the_plan_and_samconfig_entries(tmp_path):
    config = write_config(tmp_path)
    samconfig = tmp_path / "samconfig.toml"
    samconfig.write_text('version = 0.1\n\n[default.deploy.parameters]\nstack_name = "s"\n'
                         'parameter_overrides = "Scheduler=\\"sge\\" JobsPlanDigest=\\"old\\""\n'
                         '\n[default.build.parameters]\ncached = true\n')
    result = preprocess(config, plan_dir=tmp_path / "plan", samconfig=samconfig)
    data = tomllib.loads(samconfig.read_text())
    overrides = data["default"]["deploy"]["parameters"]["parameter_overrides"]
    assert f'JobsPlanDigest="{result.plan.digest}"' in overrides
    assert 'Scheduler="sge"' in overrides            # the user's own entries are kept
    assert data["default"]["build"]["parameters"]["cached"] is True
    assert json.loads((tmp_path / "plan" / "plan.json").read_text())["digest"] == result.plan.digest


def test_preprocess_grants_read_on_exactly_the_s3_sources(tmp_path):
    (tmp_path / "jobs.ini").write_text(
        "[order]\nparallel = a, b\n\n[job a]\nhandler = x.sh\ns3_uri = s3://bucket-one/proj/a\n"
        "\n[job b]\nhandler = y.sh\ns3_uri = s3://bucket-two/b/\n")
    samconfig = tmp_path / "samconfig.toml"
    result = preprocess(tmp_path / "jobs.ini", plan_dir=tmp_path / "plan", samconfig=samconfig)
    assert result.overrides["JobSourceBucketArns"] == "arn:aws:s3:::bucket-one,arn:aws:s3:::bucket-two"
    assert result.overrides["JobSourceObjectArns"] == \
        "arn:aws:s3:::bucket-one/proj/a*,arn:aws:s3:::bucket-two/b/*"


def test_a_thousand_jobs_fit_every_limit(tmp_path):
    """1,000 jobs: the definition does not grow, no parameter passes 4,096 bytes, and the run
    record (the biggest state payload) stays well under 256 KiB even with 64-character names."""
    names = [f"{i:04d}" + "n" * 60 for i in range(1000)]
    text = "[order]\nparallel = " + ", ".join(names) + "\n" + "".join(
        f"\n[job {n}]\nhandler = run.sh\ns3_uri = s3://shared-bucket/jobs/{i}/\n" for i, n in enumerate(names))
    (tmp_path / "jobs.ini").write_text(text)
    result = preprocess(tmp_path / "jobs.ini", plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml")
    assert len(result.plan.jobs) == 1000
    assert all(len(v.encode()) <= 4096 for v in result.overrides.values())
    assert result.overrides["JobSourceObjectArns"] == "arn:aws:s3:::shared-bucket/jobs/*"
    assert len(result.overrides["JobsPlanDigest"]) == 32
    assert definition.placeholders(definition.read_definition()) >= {"JobsPlanDigest"}
    # A finished job's record, as the poll writes it (empty fields are left out).
    record = {"jobs": {n: {"job_id": "1234567", "state": "SUCCEEDED", "exit_code": 0,
                           "started": "2026-11-30T01:02:03Z", "ended": "2026-11-30T01:02:09Z"}
                       for n in names}}
    compact = json.dumps(record, separators=(",", ":")).encode()
    assert len(compact) < 192 * 1024  # 3/4 of the 256 KiB limit


def test_too_many_s3_prefixes_are_refused_before_deploy(tmp_path):
    names = [f"j{i}" for i in range(200)]
    text = "[order]\nparallel = " + ", ".join(names) + "\n" + "".join(
        f"\n[job {n}]\nhandler = run.sh\ns3_uri = s3://bucket-{i:03d}/some/long/prefix/\n" for i, n in enumerate(names))
    (tmp_path / "jobs.ini").write_text(text)
    with pytest.raises(ConfigError, match="4096"):
        preprocess(tmp_path / "jobs.ini", plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml")


def test_cli_validate_exit_codes(tmp_path, capsys):
    assert cli.main(["validate", str(write_config(tmp_path))]) == 0
    assert "2 jobs, sequential: a -> b" in capsys.readouterr().out
    (tmp_path / "bad.ini").write_text("[order]\nsequential = a,\n")
    assert cli.main(["validate", str(tmp_path / "bad.ini")]) == 2
    err = capsys.readouterr().err
    assert "bad.ini:2: [order] sequential" in err and "Traceback" not in err
    assert cli.main(["validate", str(tmp_path / "missing.ini")]) == 2


def test_preprocess_checks_the_parallelcluster_config_and_bundles_it(tmp_path):
    from pathlib import Path
    example = Path(__file__).resolve().parents[2] / "examples" / "parallelcluster.yaml"
    config = write_config(tmp_path)
    result = preprocess(config, plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml",
                        backend="parallelcluster", cluster_config=example)
    assert result.overrides["ClusterBackend"] == "parallelcluster"
    plan = load_plan(tmp_path / "plan")
    assert plan.backend == "parallelcluster"
    assert plan.cluster_config_path().read_bytes() == example.read_bytes()
    again = preprocess(config, plan_dir=tmp_path / "plan2", samconfig=tmp_path / "s.toml")
    assert again.plan.digest != result.plan.digest   # the cluster config is part of the plan


def test_preprocess_refuses_a_broken_parallelcluster_config(tmp_path):
    (tmp_path / "cluster.yaml").write_text("Region: us-east-1\nImage:\n  Os: alinux2023\n"
                                           "Scheduling:\n  Scheduler: sge\n")
    with pytest.raises(ConfigError) as caught:
        preprocess(write_config(tmp_path), plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml",
                   backend="parallelcluster", cluster_config=tmp_path / "cluster.yaml")
    text = str(caught.value)
    assert "HeadNode" in text and "slurm" in text
    assert not (tmp_path / "plan").exists()          # nothing written


def test_preprocess_refuses_credentials_in_a_cfncluster_config(tmp_path):
    (tmp_path / "cfn.config").write_text(
        "[global]\ncluster_template = default\nupdate_check = false\n\n[aws]\naws_region_name = us-east-1\n"
        "aws_access_key_id = AKIAABCDEFGHIJKLMNOP\naws_secret_access_key = abc\n\n"
        "[cluster default]\nkey_name = k\nvpc_settings = public\n\n"
        "[vpc public]\nvpc_id = vpc-12345678\nmaster_subnet_id = subnet-12345678\n")
    with pytest.raises(ConfigError) as caught:
        preprocess(write_config(tmp_path), plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml",
                   backend="cfncluster", cluster_config=tmp_path / "cfn.config")
    text = str(caught.value)
    assert "aws_access_key_id" in text and "IAM role" in text


def test_preprocess_needs_a_cluster_config_for_created_clusters_only(tmp_path):
    with pytest.raises(ConfigError, match="needs its cluster configuration"):
        preprocess(write_config(tmp_path), plan_dir=tmp_path / "p", samconfig=tmp_path / "s.toml",
                   backend="cfncluster")
    (tmp_path / "x.yaml").write_text("x: 1\n")
    with pytest.raises(ConfigError, match="takes no cluster configuration"):
        preprocess(write_config(tmp_path), plan_dir=tmp_path / "p", samconfig=tmp_path / "s.toml",
                   cluster_config=tmp_path / "x.yaml")


def test_packages_can_be_uploaded_once_and_are_then_read_from_s3(tmp_path, monkeypatch):
    """--packages-bucket: local_path packages go to S3 (content-addressed, not uploaded again),
    are no longer bundled, and the submit function may read exactly them."""
    import boto3
    from moto import mock_aws

    from stepcluster.preprocess import PackageUploader

    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    config = write_config(tmp_path)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="stack-artifacts")
        first = preprocess(config, plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml",
                           packages_bucket="stack-artifacts")
        assert len(first.uploader.uploaded) == 2 and first.uploader.present == []
        assert not list((tmp_path / "plan" / "payloads").glob("*.tar.gz"))   # not bundled
        plan = load_plan(tmp_path / "plan")
        assert plan.jobs[0].package_uri.startswith("s3://stack-artifacts/packages/")
        files = tarfile.open(fileobj=io.BytesIO(plan.archive_bytes(plan.jobs[0])), mode="r:gz").getnames()
        assert files == ["run.sh"]
        assert "arn:aws:s3:::stack-artifacts/packages/" in first.overrides["JobSourceObjectArns"]
        again = preprocess(config, plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml",
                           packages_bucket="stack-artifacts")
        assert again.uploader.uploaded == [] and len(again.uploader.present) == 2
        assert again.plan.digest == first.plan.digest
        assert isinstance(again.uploader, PackageUploader)


def test_packages_bucket_auto_needs_a_deployed_stack(tmp_path, monkeypatch):
    from moto import mock_aws

    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    (tmp_path / "s.toml").write_text('version = 0.1\n[default.deploy.parameters]\nstack_name = "mystack"\n')
    with mock_aws(), pytest.raises(ConfigError, match="deploy once first"):
        preprocess(write_config(tmp_path), plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml",
                   packages_bucket="auto")


def test_packages_bucket_auto_uses_the_stacks_artifacts_bucket(tmp_path, monkeypatch):
    import json as _json

    import boto3
    from moto import mock_aws

    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    (tmp_path / "s.toml").write_text('version = 0.1\n[default.deploy.parameters]\nstack_name = "mystack"\n')
    template = {"Resources": {"ArtifactsBucket": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "mystack-art"}}},
                "Outputs": {"ArtifactsBucketName": {"Value": {"Ref": "ArtifactsBucket"}}}}
    with mock_aws():
        boto3.client("cloudformation").create_stack(StackName="mystack", TemplateBody=_json.dumps(template))
        result = preprocess(write_config(tmp_path), plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml",
                            packages_bucket="auto")
        assert result.uploader.bucket == "mystack-art" and len(result.uploader.uploaded) == 2
