"""The SSH key a run logs in with.

For a cluster the run creates, a fresh Ed25519 key pair is made per execution: its public half
is imported as an EC2 key pair (the cluster tools install it on the head node), its private
half is stored in Secrets Manager; both are tagged with the execution and deleted with the
cluster. A key the user names instead (deployment settings) is used as it is, never deleted.
"""

from __future__ import annotations


from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stepcluster import logs
from stepcluster.clusters.base import EXECUTION_TAG, RunContext, SshKey
from stepcluster.errors import ClusterError

log = logs.logger(__name__)


def new_key_pair() -> tuple[str, str]:
    """(private key in OpenSSH PEM, public key as `ssh-ed25519 AAAA...`)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


class RunKeys:
    """Creates, finds and deletes the per-execution key pair and secret (idempotently)."""

    def __init__(self, *, prefix: str, ec2_client=None, secrets_client=None):
        self.prefix = prefix  # e.g. "stepcluster/<stack name>": IAM scopes the functions to it
        self._ec2, self._secrets = ec2_client, secrets_client

    @property
    def ec2(self):
        if self._ec2 is None:
            import boto3
            self._ec2 = boto3.client("ec2")
        return self._ec2

    @property
    def secrets(self):
        if self._secrets is None:
            import boto3
            self._secrets = boto3.client("secretsmanager")
        return self._secrets

    def names(self, execution: str) -> tuple[str, str]:
        """(EC2 key pair name, secret name) of an execution.

        The key pair joins with "." (no stack name holds one), so the IAM scope of stack "a"
        (`stepcluster.a.*`) never covers stack "a-b"'s keys.
        """
        return f"{self.prefix.replace('/', '.')}.{execution}"[:255], f"{self.prefix}/{execution}"

    def create(self, ctx: RunContext) -> SshKey:
        """A key for this execution; a retried call finds the one made before."""
        from botocore.exceptions import ClientError

        key_name, secret_name = self.names(ctx.execution)
        tags = [{"Key": EXECUTION_TAG, "Value": ctx.execution_arn}]
        try:
            existing = self.secrets.describe_secret(SecretId=secret_name)
            if any(t.get("Key") == EXECUTION_TAG and t.get("Value") == ctx.execution_arn
                   for t in existing.get("Tags", [])) and self._key_pair_exists(key_name):
                return SshKey(key_name, existing["ARN"], owned=True)
            raise ClusterError(f"secret {secret_name} exists but is not this execution's: not touching it")
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise ClusterError(f"cannot look up secret {secret_name}: {exc}") from exc
        private, public = new_key_pair()
        try:
            self.ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=public.encode(),
                                     TagSpecifications=[{"ResourceType": "key-pair", "Tags": tags}])
            arn = self.secrets.create_secret(
                Name=secret_name, SecretString=private, Tags=tags,
                Description=f"SSH key of stepcluster execution {ctx.execution}")["ARN"]
        except ClientError as exc:
            self.delete(ctx.execution)
            raise ClusterError(f"cannot create the run's SSH key {key_name}: {exc}") from exc
        log.info("created key pair %s and secret %s", key_name, secret_name)
        return SshKey(key_name, arn, owned=True)

    def _key_pair_exists(self, key_name: str) -> bool:
        from botocore.exceptions import ClientError
        try:
            self.ec2.describe_key_pairs(KeyNames=[key_name])
            return True
        except ClientError:
            return False

    def tagged_executions(self, arn_prefix: str) -> set[str]:
        """Execution ARNs starting with `arn_prefix` that this stack's run key pairs and secrets
        (named under this prefix) are tagged with: what the periodic sweep looks at."""
        key_prefix, secret_prefix = f"{self.prefix.replace('/', '.')}.", f"{self.prefix}/"
        found = set()

        def add(name: str, wanted: str, tags) -> None:
            for tag in tags or []:
                value = tag.get("Value") or ""
                if name.startswith(wanted) and tag.get("Key") == EXECUTION_TAG and value.startswith(arn_prefix):
                    found.add(value)

        pairs = self.ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [f"{key_prefix}*"]}])
        for pair in pairs.get("KeyPairs") or []:
            add(pair.get("KeyName") or "", key_prefix, pair.get("Tags"))
        # ListSecrets' name filter is a case-insensitive prefix match: the check in add() is exact.
        for page in self.secrets.get_paginator("list_secrets").paginate(
                Filters=[{"Key": "name", "Values": [secret_prefix]}]):
            for secret in page.get("SecretList") or []:
                add(secret.get("Name") or "", secret_prefix, secret.get("Tags"))
        return found

    def delete(self, execution: str) -> None:
        """Delete the execution's key pair and secret; already gone is fine."""
        from botocore.exceptions import ClientError

        key_name, secret_name = self.names(execution)
        try:
            self.ec2.delete_key_pair(KeyName=key_name)  # EC2 answers success for a missing key
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "InvalidKeyPair.NotFound":
                raise ClusterError(f"cannot delete key pair {key_name}: {exc}") from exc
        try:
            self.secrets.delete_secret(SecretId=secret_name, ForceDeleteWithoutRecovery=True)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise ClusterError(f"cannot delete secret {secret_name}: {exc}") from exc
        log.info("deleted key pair %s and secret %s", key_name, secret_name)
