"""preprocess asks EC2 whether VpcSubnetIds can reach Secrets Manager and S3 (moto's EC2)."""

import time
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from stepcluster import cli
from stepcluster.network import subnet_warnings
from stepcluster.preprocess import Setting, preprocess

REGION = "us-east-1"


@pytest.fixture
def aws(monkeypatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(var, value)
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def network(ec2):
    """A VPC with: a subnet routed through a NAT gateway, one whose 0.0.0.0/0 goes to the internet
    gateway (useless to Lambda), one on the main route table (no default route)."""
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = {name: ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"]
              for i, name in enumerate(["nat", "igw", "main", "public"])}
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    nat = ec2.create_nat_gateway(SubnetId=subnet["public"], AllocationId=ec2.allocate_address(Domain="vpc")["AllocationId"])
    tables = {}
    for name, target in (("nat", {"NatGatewayId": nat["NatGateway"]["NatGatewayId"]}), ("igw", {"GatewayId": igw})):
        tables[name] = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        ec2.create_route(RouteTableId=tables[name], DestinationCidrBlock="0.0.0.0/0", **target)
        ec2.associate_route_table(RouteTableId=tables[name], SubnetId=subnet[name])
    tables["main"] = next(t["RouteTableId"] for t in ec2.describe_route_tables()["RouteTables"]
                          if t["VpcId"] == vpc and any(a.get("Main") for a in t["Associations"]))
    return vpc, subnet, tables, igw


def warnings_for(ec2, ids, source=None):
    source = source or Setting(",".join(ids), "--vpc-subnet-ids")
    return subnet_warnings(ids, source=source, samconfig=Path("/nonexistent/samconfig.toml"), ec2_client=ec2)


def test_each_subnet_without_a_way_out_is_named_with_what_it_lacks(aws):
    vpc, subnet, tables, igw = network(aws)
    found = warnings_for(aws, [subnet["nat"], subnet["igw"], subnet["main"]])
    assert [w.severity for w in found] == ["warning", "warning"]
    igw_warning, main_warning = (str(w) for w in found)
    assert igw_warning.startswith(f"--vpc-subnet-ids: warning: VpcSubnetIds: {subnet['igw']}: its 0.0.0.0/0 "
                                  f"route in {tables['igw']} goes to {igw}, an internet gateway")
    assert main_warning.startswith(f"--vpc-subnet-ids: warning: VpcSubnetIds: {subnet['main']}: "
                                   f"{tables['main']} has no 0.0.0.0/0 route to a NAT gateway")
    for text in (igw_warning, main_warning):
        assert f"no secretsmanager interface endpoint with private DNS in {vpc}" in text
        assert f"no s3 gateway endpoint on that route table in {vpc}" in text
        assert "cannot reach Secrets Manager nor S3" in text


def test_vpc_endpoints_are_enough_without_nat(aws):
    vpc, subnet, tables, _ = network(aws)
    aws.create_vpc_endpoint(VpcId=vpc, ServiceName=f"com.amazonaws.{REGION}.s3", VpcEndpointType="Gateway",
                            RouteTableIds=[tables["main"]])
    main, igw = warnings_for(aws, [subnet["main"], subnet["igw"]])
    # the gateway endpoint serves the main table's subnet only; the interface endpoint is missing
    assert main.message.startswith(subnet["main"]) and "no secretsmanager interface endpoint" in main.message
    assert "no s3" not in main.message and "cannot reach Secrets Manager;" in main.message
    assert igw.message.startswith(subnet["igw"]) and "no s3 gateway endpoint" in igw.message
    aws.create_vpc_endpoint(VpcId=vpc, ServiceName=f"com.amazonaws.{REGION}.secretsmanager",
                            VpcEndpointType="Interface", SubnetIds=[subnet["main"]], PrivateDnsEnabled=True)
    assert warnings_for(aws, [subnet["main"], subnet["nat"]]) == []


def test_unknown_subnets_are_a_warning(aws):
    (warning,) = warnings_for(aws, ["subnet-0000dead"])
    assert warning.severity == "warning" and "subnet-0000dead" in warning.message


def test_preprocess_prints_the_warnings_and_still_writes(aws, tmp_path, capsys):
    _, subnet, _, _ = network(aws)
    (tmp_path / "jobs.ini").write_text("[order]\nsequential = a\n\n[job a]\nhandler = r.sh\ns3_uri = s3://bkt/a/\n")
    samconfig = tmp_path / "samconfig.toml"
    samconfig.write_text(f'version = 0.1\n\n[default.deploy.parameters]\nregion = "{REGION}"\n'
                         f'parameter_overrides = "VpcSubnetIds=\\"{subnet["main"]}\\" VpcSecurityGroupIds=\\"sg-0123abcd\\""\n')
    assert cli.main(["preprocess", str(tmp_path / "jobs.ini"), "--plan-dir", str(tmp_path / "plan"),
                     "--samconfig", str(samconfig), "--backend", "existing"]) == 0
    err = capsys.readouterr().err
    # the subnets came from samconfig.toml: the warning names its line
    assert f"{samconfig}:5: warning: VpcSubnetIds: {subnet['main']}: " in err
    assert (tmp_path / "plan" / "plan.json").is_file()


def test_without_credentials_the_check_is_skipped_with_a_note(tmp_path, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in {"AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_CONFIG_FILE": "/dev/null",
                       "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(var, value)
    source = Setting("subnet-0123abcd", "--vpc-subnet-ids")
    started = time.monotonic()
    (note,) = subnet_warnings(["subnet-0123abcd"], source=source, samconfig=tmp_path / "none.toml")
    assert time.monotonic() - started < 5
    assert note.severity == "note" and str(note) == (
        "--vpc-subnet-ids: note: VpcSubnetIds: not checked whether the subnets reach Secrets Manager "
        "and S3: no AWS credentials")


def test_an_unreachable_ec2_is_a_note_not_a_hang(tmp_path, monkeypatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": REGION,
                       "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}.items():   # a closed port
        monkeypatch.setenv(var, value)
    started = time.monotonic()
    result = preprocess(_jobs(tmp_path), plan_dir=tmp_path / "plan", samconfig=tmp_path / "s.toml",
                        vpc_subnet_ids="subnet-0123abcd", vpc_security_group_ids="sg-0123abcd")
    assert time.monotonic() - started < 20
    (note,) = [w for w in result.warnings if w.key == "VpcSubnetIds"]
    assert note.severity == "note" and "not checked" in note.message and note.path == "--vpc-subnet-ids"


def _jobs(tmp_path):
    (tmp_path / "jobs.ini").write_text("[order]\nsequential = a\n\n[job a]\nhandler = r.sh\ns3_uri = s3://bkt/a/\n")
    return tmp_path / "jobs.ini"
