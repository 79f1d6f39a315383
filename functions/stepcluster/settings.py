"""Deployment settings: the template's parameters, as the functions' environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping

from stepcluster.config import Problem
from stepcluster.errors import ConfigError

BACKENDS = ("existing", "parallelcluster", "cfncluster")
SCHEDULERS = ("slurm", "sge", "torque")


@dataclass(frozen=True)
class Settings:
    backend: str = "existing"
    # existing head node (backend "existing"); for created clusters these come from the backend
    scheduler: str | None = None
    head_node_host: str | None = None
    head_node_port: int = 22
    head_node_user: str | None = None
    head_node_host_key: str | None = None
    # SSH key: for "existing", the secret holding its private key; for created clusters, empty
    # (a key pair is made per execution) or a key pair the user names with its secret
    ssh_key_secret_id: str | None = None
    ssh_key_name: str | None = None
    remote_root: str = "stepcluster-runs"
    cluster_poll_seconds: int = 30
    create_timeout_seconds: int = 3600
    use_public_address: bool = False
    region: str | None = None
    resource_prefix: str = "stepcluster"  # names of per-run keys and secrets (IAM scopes to it)
    artifacts_bucket: str | None = None   # where each job's results are kept after the run
    blocked_job_timeout_seconds: int = 600  # a job that cannot start by itself fails after this
    max_run_minutes: int = 10080  # a run still going this long after its start is ended (a week)
    poll_window_seconds: int = 720  # a polling round waits on the head node this long at most (0: no)
    staging: str = "ssh"  # "ssh": files go through the function; "head-node": it downloads them
    release_function: str | None = None  # the abort cleanup of a created cluster calls it first
    # a run of more jobs keeps their records in the artifacts bucket, not in the run record
    # (jobtable.py): 200 records stay far below Step Functions' 256 KiB whatever their reasons say
    jobs_in_record: int = 200
    notify_topic_arn: str | None = None  # the notify function's: where a run's end is told (SNS)
    price_table: str | None = None  # PriceTable: USD prices (JSON) for the usage's estimate (usage.py)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read STEPCLUSTER_* variables; every missing or bad one is named in one error."""
        env = os.environ if env is None else env
        problems, values = [], {}
        for field in fields(cls):
            var = f"STEPCLUSTER_{field.name.upper()}"
            raw = (env.get(var) or "").strip()
            if not raw:
                continue
            if field.type == "int":
                try:
                    values[field.name] = int(raw)
                except ValueError:
                    problems.append(Problem("environment", None, None, var, f"must be an integer, got {raw!r}"))
            elif field.type == "bool":
                values[field.name] = raw.lower() in ("1", "true", "yes")
            else:
                values[field.name] = raw
        values.setdefault("region", env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"))

        def need(name, why):
            if not values.get(name):
                problems.append(Problem("environment", None, None, f"STEPCLUSTER_{name.upper()}", why))

        backend = values.get("backend", "existing")
        if backend not in BACKENDS:
            problems.append(Problem("environment", None, None, "STEPCLUSTER_BACKEND",
                                    f"must be one of {', '.join(BACKENDS)}, got {backend!r}"))
        if backend == "existing":
            for name in ("scheduler", "head_node_host", "head_node_user", "head_node_host_key",
                         "ssh_key_secret_id"):
                need(name, "is not set (required for an existing head node)")
        if values.get("staging", "ssh") not in ("ssh", "head-node"):
            problems.append(Problem("environment", None, None, "STEPCLUSTER_STAGING",
                                    f"must be ssh or head-node, got {values['staging']!r}"))
        if values.get("scheduler") and values["scheduler"] not in SCHEDULERS:
            problems.append(Problem("environment", None, None, "STEPCLUSTER_SCHEDULER",
                                    f"must be one of {', '.join(SCHEDULERS)}, got {values['scheduler']!r}"))
        if bool(values.get("ssh_key_name")) != bool(values.get("ssh_key_secret_id")) and backend != "existing":
            problems.append(Problem("environment", None, None, "STEPCLUSTER_SSH_KEY_NAME",
                                    "a key pair name and the secret holding its private key go together"))
        if problems:
            raise ConfigError(problems)
        return cls(**values)
