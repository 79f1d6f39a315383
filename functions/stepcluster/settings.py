"""Deployment settings: the template's parameters, as the functions' environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from stepcluster.errors import ConfigError
from stepcluster.config import Problem

BACKENDS = ("existing",)
SCHEDULERS = ("slurm", "sge", "torque")


@dataclass(frozen=True)
class Settings:
    backend: str
    scheduler: str
    head_node_host: str
    head_node_port: int
    head_node_user: str
    head_node_host_key: str
    ssh_key_secret_id: str
    remote_root: str = "stepcluster-runs"
    cluster_poll_seconds: int = 30

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read STEPCLUSTER_* variables; every missing or bad one is named in one error."""
        env = os.environ if env is None else env
        problems = []

        def get(name, default=None, choices=None, integer=False):
            var = f"STEPCLUSTER_{name}"
            value = (env.get(var) or "").strip() or default
            if value is None:
                problems.append(Problem("environment", None, None, var, "is not set"))
                return None
            if choices and value not in choices:
                problems.append(Problem("environment", None, None, var,
                                        f"must be one of {', '.join(choices)}, got {value!r}"))
            if integer:
                try:
                    return int(value)
                except ValueError:
                    problems.append(Problem("environment", None, None, var,
                                            f"must be an integer, got {value!r}"))
            return value

        values = dict(
            backend=get("BACKEND", "existing", BACKENDS),
            scheduler=get("SCHEDULER", None, SCHEDULERS),
            head_node_host=get("HEAD_NODE_HOST"),
            head_node_port=get("HEAD_NODE_PORT", "22", integer=True),
            head_node_user=get("HEAD_NODE_USER"),
            head_node_host_key=get("HEAD_NODE_HOST_KEY"),
            ssh_key_secret_id=get("SSH_KEY_SECRET_ID"),
            remote_root=get("REMOTE_ROOT", "stepcluster-runs"),
            cluster_poll_seconds=get("CLUSTER_POLL_SECONDS", "30", integer=True),
        )
        if problems:
            raise ConfigError(problems)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        return {f"STEPCLUSTER_{k.upper()}": str(v) for k, v in self.__dict__.items()}
