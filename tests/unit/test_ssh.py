"""remote/ssh.py without a server: the host-key pin, quoting, results and errors. (Real OpenSSH
on loopback is tests/e2e's.)"""

from __future__ import annotations

import base64
import io

import paramiko
import pytest

from stepcluster.errors import HostKeyError, RemoteCommandError, SSHAuthenticationError
from stepcluster.remote import ssh
from stepcluster.remote.ssh import CommandResult, HeadNodeConnection, HostKeyPin, fingerprint_of


@pytest.fixture(scope="module")
def keys():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    def make():
        private = ed25519.Ed25519PrivateKey.generate()
        text = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                     serialization.NoEncryption()).decode()
        return paramiko.Ed25519Key.from_private_key(io.StringIO(text)), text
    return make(), make()


def public_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


def test_a_pin_is_a_key_a_known_hosts_line_or_a_fingerprint(keys):
    (key, _), _ = keys
    fingerprint = fingerprint_of(key.asbytes())
    assert fingerprint.startswith("SHA256:") and not fingerprint.endswith("=")
    for text in (public_line(key), f"[10.0.0.5]:22 {public_line(key)}", f"{public_line(key)} root@head",
                 fingerprint, fingerprint + "="):
        assert HostKeyPin.parse(text).fingerprint == fingerprint, text


@pytest.mark.parametrize("text", ["", "ssh-ed25519", "ssh-ed25519 not*base64", "MD5:aa:bb", "hello world"])
def test_anything_else_is_refused_as_a_pin(text):
    with pytest.raises(HostKeyError, match="must be a public key"):
        HostKeyPin.parse(text)


def test_the_pin_matches_its_own_key_only(keys):
    (key, _), (other, _) = keys
    pin = HostKeyPin.parse(public_line(key))
    assert pin.matches(key) and not pin.matches(other)
    assert HostKeyPin.parse(fingerprint_of(key.asbytes())).matches(key)


def test_an_unknown_server_key_is_refused_naming_both_fingerprints(keys):
    (key, _), (other, _) = keys
    policy = ssh._PinnedHostKeyPolicy(HostKeyPin.parse(public_line(key)))
    policy.missing_host_key(None, "head", key)  # the pinned one: accepted
    with pytest.raises(HostKeyError) as raised:
        policy.missing_host_key(None, "head", other)
    assert fingerprint_of(other.asbytes()) in str(raised.value) and fingerprint_of(key.asbytes()) in str(raised.value)


def test_private_keys_load_or_fail_clearly(keys):
    (key, text), _ = keys
    assert ssh.load_private_key(text).get_fingerprint() == key.get_fingerprint()
    with pytest.raises(SSHAuthenticationError, match="could not be read"):
        ssh.load_private_key("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n")


class Recorded(HeadNodeConnection):
    """A connection whose channel is a list: what would be sent, and a canned exit code."""

    def __init__(self, exit_code=0):
        super().__init__("head", 22, "hpc", "key", "SHA256:x")
        self.sent, self.exit_code = [], exit_code

    def _exec(self, command, stdin, check, timeout):
        self.sent.append((command, stdin))
        result = CommandResult(command, "out\n", "line1\nline2\n", self.exit_code)
        if check and not result.ok:
            raise RemoteCommandError(result)
        return result


def test_argument_lists_are_quoted_once_never_joined_with_spaces():
    connection = Recorded()
    connection.run(["scancel", "--", "12 34", "$(reboot)", "a'b"])
    assert connection.sent == [("scancel -- '12 34' '$(reboot)' 'a'\"'\"'b'", None)]


def test_scripts_go_on_stdin_to_a_login_shell_and_failures_carry_their_result():
    connection = Recorded(exit_code=3)
    with pytest.raises(RemoteCommandError) as raised:
        connection.run_script("echo hi\nexit 3\n")
    assert connection.sent == [("bash -l -s", "echo hi\nexit 3\n")]
    assert raised.value.result.exit_code == 3 and raised.value.result.command == "echo hi\nexit 3\n"
    assert connection.run_script("x", check=False).exit_code == 3


def test_a_result_tail_prefers_stderr_and_keeps_the_last_lines():
    result = CommandResult("c", "o1\no2\n", "e1\ne2\ne3\n", 1)
    assert not result.ok and result.tail(2) == "e2\ne3"
    assert CommandResult("c", "o1\no2\n", "  \n", 1).tail(1) == "o2"


def test_a_connection_never_stores_the_key_in_its_repr(keys):
    _, (_, text) = keys
    assert text not in repr(HeadNodeConnection("h", 22, "u", text, "SHA256:x"))
