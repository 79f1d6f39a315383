"""The compiled plan and `stepcluster preprocess`: what `sam build && sam deploy` ship."""

import io
import json
import os
import re
import tarfile
import tomllib
from pathlib import Path

import pytest

from stepcluster import cli, definition
from stepcluster.config import load_jobs_config
from stepcluster.errors import ConfigError, PlanError
from stepcluster.plan import MAX_PAYLOAD_BYTES, build_plan, load_plan, pack_local_path
from stepcluster.preprocess import preprocess

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


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
                        backend="parallelcluster", cluster_config=example, use_public_address="true")
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


# --- S3 sources never widen IAM ----------------------------------------------------------------

def iam_matches(pattern: str, arn: str) -> bool:
    """IAM's Resource matching: "*" and "?" are wildcards, ${*} ${?} ${$} a literal *, ? and $.
    An unescaped "${" (a policy variable) fails the test: preprocess must never write one."""
    regex, i = "", 0
    while i < len(pattern):
        literal = next((v for v in ("${*}", "${?}", "${$}") if pattern.startswith(v, i)), None)
        if literal:
            regex, i = regex + re.escape(literal[2]), i + 4
            continue
        assert not pattern.startswith("${", i), f"a policy variable in {pattern!r}"
        regex += {"*": ".*", "?": "."}.get(pattern[i], re.escape(pattern[i]))
        i += 1
    return re.fullmatch(regex, arn, re.S) is not None


def s3_config(tmp_path, uris, name="jobs.ini"):
    names = [f"j{i}" for i in range(len(uris))]
    (tmp_path / name).write_text("[order]\nparallel = " + ", ".join(names) + "\n" + "".join(
        f"\n[job {n}]\nhandler = run.sh\ns3_uri = {uri}\n" for n, uri in zip(names, uris)))
    return tmp_path / name


@pytest.mark.parametrize("uri, written, granted, refused", [
    ("s3://bkt/*", "arn:aws:s3:::bkt/${*}*", ["bkt/*", "bkt/*/data"], ["bkt/other", "bkt/x*"]),
    ("s3://bkt/a?c/", "arn:aws:s3:::bkt/a${?}c/*", ["bkt/a?c/x"], ["bkt/abc/x"]),
    ("s3://bkt/$x", "arn:aws:s3:::bkt/${$}x*", ["bkt/$x", "bkt/$x/y"], ["bkt/y"]),
    ("s3://bkt/${aws:username}/", "arn:aws:s3:::bkt/${$}{aws:username}/*",
     ["bkt/${aws:username}/f"], ["bkt/alice/f"]),
    ("s3://bkt/plain/", "arn:aws:s3:::bkt/plain/*", ["bkt/plain/f"], ["bkt/plainer"]),
])
def test_s3_keys_with_iam_wildcards_grant_only_themselves(tmp_path, uri, written, granted, refused):
    result = preprocess(s3_config(tmp_path, [uri]), plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml")
    assert result.overrides["JobSourceObjectArns"] == written
    assert result.overrides["JobSourceBucketArns"] == "arn:aws:s3:::bkt"
    for key in granted:
        assert iam_matches(written, f"arn:aws:s3:::{key}"), key
    for key in refused:
        assert not iam_matches(written, f"arn:aws:s3:::{key}"), key


def test_an_s3_key_with_a_comma_is_refused_before_anything_is_written(tmp_path, capsys):
    """`s3://b/x,arn:aws:s3:::other/` would have become two IAM resources, one of them another
    bucket: refused with the config's line and job, by validate as by preprocess."""
    config = s3_config(tmp_path, ["s3://bkt/ok/", "s3://bkt/x,arn:aws:s3:::other/"])
    with pytest.raises(ConfigError) as caught:
        preprocess(config, plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml")
    (problem,) = caught.value.problems
    assert (problem.path, problem.line, problem.section, problem.key) == (str(config), 10, "job j1", "s3_uri")
    assert "the key contains ','" in problem.message
    assert not (tmp_path / "plan").exists() and not (tmp_path / "s.toml").exists()
    assert cli.main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}:10: [job j1] s3_uri: the key contains ','" in err and "Traceback" not in err


def test_a_packages_bucket_that_is_not_a_bucket_name_is_refused(tmp_path):
    """Its packages are granted like S3 sources: "b,arn:aws:s3:::other" would grant two buckets."""
    with pytest.raises(ConfigError) as caught:
        preprocess(write_config(tmp_path), plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml",
                   packages_bucket="b-b,arn:aws:s3:::other")
    (problem,) = caught.value.problems
    assert problem.path == "--packages-bucket" and "invalid bucket name" in problem.message
    assert not (tmp_path / "plan").exists()


def test_merged_prefixes_are_escaped_after_merging(tmp_path, monkeypatch):
    """The fallback that merges a bucket's prefixes works on the keys as written and escapes
    the result: merging escaped keys could cut ${*} into "${" (a broken policy variable) or
    keep a key's own "*" as a wildcard."""
    monkeypatch.setattr("stepcluster.preprocess.MAX_PARAMETER_BYTES", 90)
    uris = ["s3://bkt-one/p*1/", "s3://bkt-one/p?2/", "s3://bkt-two/q$a/x", "s3://bkt-two/q$b/y"]
    result = preprocess(s3_config(tmp_path, uris), plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml")
    objects = result.overrides["JobSourceObjectArns"].split(",")
    assert objects == ["arn:aws:s3:::bkt-one/p*", "arn:aws:s3:::bkt-two/q${$}*"]
    for uri in uris:   # each source is still readable, through its own bucket's pattern
        bucket, _, key = uri[5:].partition("/")
        assert [o for o in objects if iam_matches(o, f"arn:aws:s3:::{bucket}/{key}file")] == \
            [o for o in objects if o.startswith(f"arn:aws:s3:::{bucket}/")]
    assert not any(iam_matches(o, "arn:aws:s3:::bkt-two/qa/file") for o in objects)


# --- deployment settings: networking and the ParallelCluster IAM mode ---------------------------

EXAMPLE_CLUSTER = Path(__file__).resolve().parents[2] / "examples" / "parallelcluster.yaml"
SUBNETS, GROUPS = "subnet-0123abcd,subnet-4567ef01", "sg-0123abcd"


def overrides_in(samconfig) -> dict:
    from stepcluster.preprocess import read_parameter_overrides
    return read_parameter_overrides(samconfig)[0]


@pytest.mark.parametrize("backend, cluster", [("parallelcluster", EXAMPLE_CLUSTER),
                                               ("cfncluster", FIXTURES / "cfncluster" / "good.config")])
def test_a_created_cluster_the_functions_could_never_reach_is_refused(tmp_path, backend, cluster):
    """Defaults (UsePublicAddress "false", no VPC): the functions outside any VPC would SSH to a
    private address. Refused before anything is written, saying where each value comes from."""
    with pytest.raises(ConfigError) as caught:
        preprocess(write_config(tmp_path), plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml",
                   backend=backend, cluster_config=cluster)
    (problem,) = caught.value.problems
    assert (problem.path, problem.line, problem.key) == (str(tmp_path / "s.toml"), None, "UsePublicAddress")
    assert problem.message.startswith('is "false" (the template\'s default): backend ' + backend)
    assert "VpcSubnetIds empty (the template's default)" in problem.message
    assert "--vpc-subnet-ids" in problem.message and "--use-public-address true" in problem.message
    assert not (tmp_path / "plan").exists() and not (tmp_path / "s.toml").exists()


def test_the_refusal_names_samconfigs_line_and_the_cli_exits_2(tmp_path, capsys):
    samconfig = tmp_path / "samconfig.toml"
    samconfig.write_text('version = 0.1\n\n[default.deploy.parameters]\nstack_name = "s"\n'
                         'parameter_overrides = "UsePublicAddress=\\"false\\" VpcSubnetIds=\\"\\""\n')
    args = ["preprocess", str(write_config(tmp_path)), "--plan-dir", str(tmp_path / "plan"),
            "--samconfig", str(samconfig), "--backend", "parallelcluster", "--cluster-config", str(EXAMPLE_CLUSTER)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'{samconfig}:5: UsePublicAddress: is "false" (samconfig.toml): backend parallelcluster')
    assert 'VpcSubnetIds empty (samconfig.toml)' in err and "Traceback" not in err
    # the options that fix it are written into samconfig.toml, and kept by the next run
    def network():
        return {k: overrides_in(samconfig).get(k) for k in ("UsePublicAddress", "VpcSubnetIds", "VpcSecurityGroupIds")}

    assert cli.main([*args, "--no-network-check", "--vpc-subnet-ids", SUBNETS.replace(",", ", "),
                     "--vpc-security-group-ids", GROUPS]) == 0
    assert network() == {"UsePublicAddress": "false", "VpcSubnetIds": SUBNETS, "VpcSecurityGroupIds": GROUPS}
    assert cli.main([*args, "--no-network-check"]) == 0
    assert cli.main([*args, "--vpc-subnet-ids", "", "--vpc-security-group-ids", "", "--use-public-address", "true"]) == 0
    assert network() == {"UsePublicAddress": "true", "VpcSubnetIds": "", "VpcSecurityGroupIds": ""}


@pytest.mark.parametrize("options, key, fragment", [
    ({"vpc_subnet_ids": SUBNETS}, "VpcSecurityGroupIds",
     f'is empty (the template\'s default) while VpcSubnetIds is "{SUBNETS}" (--vpc-subnet-ids): set both'),
    ({"vpc_security_group_ids": GROUPS, "use_public_address": "true"}, "VpcSubnetIds", "set both (--vpc-subnet-ids)"),
    ({"vpc_subnet_ids": "subnet-0123abcd,vpc-0123", "vpc_security_group_ids": GROUPS}, "VpcSubnetIds",
     "not subnet ids (e.g. subnet-0123456789abcdef0): 'vpc-0123'"),
    ({"vpc_subnet_ids": SUBNETS, "vpc_security_group_ids": "sg-XYZ"}, "VpcSecurityGroupIds", "not security group ids"),
])
def test_vpc_options_are_checked_as_the_template_does(tmp_path, options, key, fragment):
    with pytest.raises(ConfigError) as caught:
        preprocess(write_config(tmp_path), plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml",
                   check_network=False, **options)
    (problem,) = caught.value.problems
    assert problem.key == key and fragment in problem.message, str(problem)
    assert problem.path.startswith("--") or problem.path == str(tmp_path / "s.toml")


def test_an_existing_head_node_needs_no_vpc_and_the_iam_mode_is_written(tmp_path):
    samconfig = tmp_path / "s.toml"
    result = preprocess(write_config(tmp_path), plan_dir=tmp_path / "plan", samconfig=samconfig)
    assert result.overrides["ParallelClusterIamMode"] == "base"
    assert "UsePublicAddress" not in overrides_in(samconfig)     # not given: left as it was
    preprocess(write_config(tmp_path), plan_dir=tmp_path / "plan", samconfig=samconfig,
               parallelcluster_iam="privileged")
    assert overrides_in(samconfig)["ParallelClusterIamMode"] == "privileged"
    again = preprocess(write_config(tmp_path), plan_dir=tmp_path / "plan", samconfig=samconfig)
    assert again.overrides["ParallelClusterIamMode"] == "privileged"   # samconfig's, when not given


def without_roles(text: str) -> str:
    """The example with every Iam block (and its comments) taken out."""
    out, skip = [], None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if skip is not None and (not line.strip() or indent > skip):
            continue
        skip = indent if line.strip() == "Iam:" else None
        if skip is None:
            out.append(line)
    return "\n".join(out) + "\n"


def test_the_shipped_parallelcluster_example_passes_in_base_mode(tmp_path):
    result = preprocess(write_config(tmp_path), plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml",
                        backend="parallelcluster", cluster_config=EXAMPLE_CLUSTER, use_public_address="true")
    assert result.overrides["ParallelClusterIamMode"] == "base"


def test_the_example_without_its_roles_is_refused_in_base_mode_only(tmp_path, capsys):
    stripped = tmp_path / "cluster.yaml"
    stripped.write_text(without_roles(EXAMPLE_CLUSTER.read_text()))
    text = stripped.read_text()
    assert "InstanceRole" not in text and "LambdaFunctionsRole" not in text and "Iam:" not in text
    lines = text.splitlines()
    head = lines.index("HeadNode:") + 1
    queue = lines.index("    - Name: compute") + 1
    args = ["preprocess", str(write_config(tmp_path)), "--plan-dir", str(tmp_path / "plan"),
            "--samconfig", str(tmp_path / "s.toml"), "--backend", "parallelcluster",
            "--cluster-config", str(stripped), "--use-public-address", "true"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[0:2] for line in err] == [
        [f"{stripped}:{head}", "HeadNode.Iam"],
        [f"{stripped}:{queue}", "Scheduling.SlurmQueues[0].Iam"],
        [f"{stripped}", "Iam.Roles.LambdaFunctionsRole"]]
    assert all("ParallelClusterIamMode=privileged" in line for line in err)
    assert "HeadNode.Iam.InstanceRole: arn:aws:iam::ACCOUNT:role/parallelcluster/NAME" in err[0]
    assert not (tmp_path / "plan").exists()
    assert cli.main([*args, "--parallelcluster-iam", "privileged"]) == 0
    assert overrides_in(tmp_path / "s.toml")["ParallelClusterIamMode"] == "privileged"


def test_preprocess_checks_the_requests_for_the_scheduler_the_deployment_names(tmp_path):
    """samconfig's Scheduler (existing head node): a refused directive stops preprocess with its
    handler's line, and nothing is written; without a Scheduler only the run checks."""
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "run.sh").write_text("#!/bin/bash\n#$ -sync y\necho\n")
    (tmp_path / "jobs.ini").write_text("[order]\nsequential = a\n\n[job a]\nhandler = run.sh\nlocal_path = job\n")
    samconfig = tmp_path / "samconfig.toml"
    samconfig.write_text('version = 0.1\n\n[default.deploy.parameters]\nstack_name = "s"\n'
                         'parameter_overrides = "Scheduler=\\"sge\\""\n')
    with pytest.raises(ConfigError) as caught:
        preprocess(tmp_path / "jobs.ini", plan_dir=tmp_path / "plan", samconfig=samconfig)
    assert [(Path(p.path).name, p.line) for p in caught.value.problems] == [("run.sh", 2)]
    assert "-sync y is refused" in caught.value.problems[0].message
    assert not (tmp_path / "plan").exists()
    samconfig.write_text('version = 0.1\n\n[default.deploy.parameters]\nstack_name = "s"\n'
                         'parameter_overrides = "Scheduler=\\"slurm\\""\n')
    preprocess(tmp_path / "jobs.ini", plan_dir=tmp_path / "plan", samconfig=samconfig)  # #$ means nothing to Slurm
