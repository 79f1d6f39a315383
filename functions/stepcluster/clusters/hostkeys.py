"""A new head node's SSH host key, read from its EC2 console output.

cloud-init prints the instance's host public keys at first boot between
`-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST KEY KEYS-----`: the standard way to
pin a new EC2 host's key instead of trusting the first key seen. It can take a few minutes
after boot to appear (GetConsoleOutput with Latest=True reads the newest on Nitro instances).
"""

from __future__ import annotations

import base64
import re

_BLOCK = re.compile(r"-----BEGIN SSH HOST KEY KEYS-----(?P<keys>.*?)-----END SSH HOST KEY KEYS-----", re.S)
#: Strongest first: the pin uses the first type the head node offers.
PREFERRED_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                   "ecdsa-sha2-nistp521", "ssh-rsa")


def host_key_from_console(text: str) -> str | None:
    """The preferred `TYPE BASE64` host key in a console output, or None if none is printed."""
    match = _BLOCK.search(text or "")
    if not match:
        return None
    keys = {}
    for line in match.group("keys").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in PREFERRED_TYPES:
            keys.setdefault(words[0], words[1])
    for key_type in PREFERRED_TYPES:
        if key_type in keys:
            return f"{key_type} {keys[key_type]}"
    return None


def read_host_key(ec2_client, instance_id: str) -> str | None:
    """The head node's host key from its console output; None while it is not printed yet."""
    try:
        output = ec2_client.get_console_output(InstanceId=instance_id, Latest=True).get("Output")
    except ec2_client.exceptions.ClientError:
        output = ec2_client.get_console_output(InstanceId=instance_id).get("Output")
    if not output:
        return None
    # botocore already decodes the base64 Output; older clients may hand it over encoded.
    found = host_key_from_console(output)
    if found is None:
        try:
            found = host_key_from_console(base64.b64decode(output, validate=True).decode(errors="replace"))
        except ValueError:
            return None
    return found
