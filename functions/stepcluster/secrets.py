"""The SSH private key, read from AWS Secrets Manager (never from the package or a parameter)."""

from __future__ import annotations

import functools

from stepcluster.errors import ClusterError


@functools.lru_cache(maxsize=8)
def _cached(secret_id: str) -> str:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
    except (ClientError, BotoCoreError, KeyError) as exc:
        raise ClusterError(f"cannot read the SSH private key from secret {secret_id}: {exc}") from exc


def private_key(secret_id: str) -> str:
    """The secret's SecretString; cached per warm Lambda container (keys do not rotate mid-run)."""
    return _cached(secret_id)


def forget() -> None:
    """Drop cached keys (run-local and tests change the secrets between runs)."""
    _cached.cache_clear()
