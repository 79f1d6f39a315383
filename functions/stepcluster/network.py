"""Can the functions in these subnets reach the AWS APIs they call? Asked of EC2, at preprocess.

The functions that SSH to the head node run in VpcSubnetIds. Besides SSH they call Secrets
Manager (GetSecretValue: the SSH key) and S3 (the jobs' sources and packages, the results):
Lambda gives their network interfaces no public address, so a subnet needs a 0.0.0.0/0 route
to a NAT gateway (or NAT instance, or transit gateway), or else a secretsmanager interface
endpoint (with private DNS) and an S3 gateway endpoint on its route table, in its VPC.

Warnings only, never errors (the check cannot see security groups, NACLs, or what lies behind
a transit gateway), and only when AWS credentials and a region are at hand: without them, or
when EC2 cannot be asked, one note says the check was skipped. Short timeouts and one attempt,
so it never hangs.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from stepcluster.config import Problem

#: The services the VPC'd functions call: what for, and the endpoint that serves them in a VPC.
SERVICES = {"secretsmanager": ("Secrets Manager", "the SSH key", "interface endpoint with private DNS"),
            "s3": ("S3", "the jobs' files and results", "gateway endpoint on that route table")}


def _client(samconfig: Path):
    """An EC2 client for the deployment's region, or (None, why not)."""
    import boto3
    from botocore.config import Config

    region = None
    try:
        data = tomllib.loads(samconfig.read_text()) if samconfig.exists() else {}
        region = data.get("default", {}).get("deploy", {}).get("parameters", {}).get("region")
    except (OSError, tomllib.TOMLDecodeError):
        pass
    session = boto3.session.Session(region_name=region)
    if not session.region_name:
        return None, "no AWS region (samconfig.toml's deploy region, AWS_REGION or a profile)"
    if session.get_credentials() is None:
        return None, "no AWS credentials"
    config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 1, "mode": "standard"})
    return session.client("ec2", config=config), None


def subnet_warnings(subnet_ids: list[str], *, source, samconfig: Path, ec2_client=None) -> list[Problem]:
    """A warning per subnet whose functions could not reach Secrets Manager or S3, naming the
    missing route or endpoint; or one note saying why the subnets could not be checked.
    `source`: the VpcSubnetIds setting (where the ids come from)."""
    from botocore.exceptions import BotoCoreError, ClientError

    path = source.source if source.source.startswith("--") else str(samconfig)

    def note(message, severity="note"):
        return Problem(path, source.line, None, "VpcSubnetIds", message, severity)

    ec2 = ec2_client
    if ec2 is None:
        ec2, why = _client(samconfig)
        if ec2 is None:
            return [note(f"not checked whether the subnets reach Secrets Manager and S3: {why}")]
    region = ec2.meta.region_name
    try:
        subnets = ec2.describe_subnets(SubnetIds=subnet_ids)["Subnets"]
        vpcs = sorted({s["VpcId"] for s in subnets})
        tables = [t for page in ec2.get_paginator("describe_route_tables").paginate(
                      Filters=[{"Name": "vpc-id", "Values": vpcs}]) for t in page["RouteTables"]]
        endpoints = [e for page in ec2.get_paginator("describe_vpc_endpoints").paginate(
                         Filters=[{"Name": "vpc-id", "Values": vpcs}]) for e in page["VpcEndpoints"]]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "InvalidSubnetID.NotFound":
            return [note(f"EC2 does not know these subnets in {region} ({exc.response['Error'].get('Message')}): "
                         f"the deployment would fail", "warning")]
        return [note(f"not checked whether the subnets reach Secrets Manager and S3: EC2 says {exc}")]
    except BotoCoreError as exc:
        return [note(f"not checked whether the subnets reach Secrets Manager and S3: {exc}")]

    warnings = []
    for subnet in sorted(subnets, key=lambda s: subnet_ids.index(s["SubnetId"])):
        sid, vpc = subnet["SubnetId"], subnet["VpcId"]
        table = _route_table(tables, sid, vpc)
        if table is None:
            warnings.append(note(f"{sid} ({vpc}): no route table found", "warning"))
            continue
        default = [r for r in table.get("Routes", []) if r.get("DestinationCidrBlock") == "0.0.0.0/0"
                   and r.get("State", "active") == "active"]
        if any(r.get(k) for r in default for k in ("NatGatewayId", "InstanceId", "NetworkInterfaceId",
                                                    "TransitGatewayId")):
            continue
        missing = [name for name in SERVICES
                   if not _has_endpoint(endpoints, vpc, table["RouteTableId"], f"com.amazonaws.{region}.{name}")]
        if not missing:
            continue
        igw = next((r["GatewayId"] for r in default if str(r.get("GatewayId", "")).startswith("igw-")), None)
        route = (f"its 0.0.0.0/0 route in {table['RouteTableId']} goes to {igw}, an internet gateway, "
                 f"which Lambda cannot use (its network interfaces have no public address)"
                 if igw else f"{table['RouteTableId']} has no 0.0.0.0/0 route to a NAT gateway")
        needs = ", ".join(f"no {name} {SERVICES[name][2]} in {vpc} (for {SERVICES[name][1]})" for name in missing)
        warnings.append(note(f"{sid}: {route}, and {needs}: the functions there cannot reach "
                             f"{' nor '.join(SERVICES[name][0] for name in missing)}; add a 0.0.0.0/0 "
                             f"route to a NAT gateway, or the endpoints", "warning"))
    for sid in subnet_ids:
        if sid not in {s["SubnetId"] for s in subnets}:
            warnings.append(note(f"{sid}: EC2 does not know it in {region}", "warning"))
    return warnings


def _route_table(tables: list[dict], subnet_id: str, vpc_id: str) -> dict | None:
    """The subnet's own route table, else its VPC's main one."""
    for table in tables:
        if any(a.get("SubnetId") == subnet_id for a in table.get("Associations", [])):
            return table
    return next((t for t in tables if t.get("VpcId") == vpc_id
                 and any(a.get("Main") for a in t.get("Associations", []))), None)


def _has_endpoint(endpoints: list[dict], vpc: str, table: str, service: str) -> bool:
    for e in endpoints:
        if e.get("VpcId") != vpc or e.get("ServiceName") != service or \
                e.get("State", "available").lower() not in ("available", "pending"):
            continue
        kind = e.get("VpcEndpointType")
        if kind == "Gateway" and table in e.get("RouteTableIds", []):
            return True
        if kind == "Interface" and e.get("PrivateDnsEnabled"):
            return True
    return False
