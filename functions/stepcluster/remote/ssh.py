"""SSH to the head node with a pinned host key.

The connection and the command are separate things: `HeadNodeConnection` connects lazily,
closes idempotently and works as a context manager; `run()` returns a `CommandResult`.
Commands are argument lists quoted once here (shlex.join), or whole scripts sent on stdin to a
login shell (`bash -l -s`: login, because cluster images put the scheduler on PATH from
/etc/profile.d), never user text pasted into a shell line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import paramiko

from stepcluster import logs
from stepcluster.errors import (
    HostKeyError, RemoteCommandError, SSHAuthenticationError, TransientSSHError,
)

log = logs.logger(__name__)

_counter_lock = threading.Lock()
#: Connections opened by this process: run-local and the benchmark report it.
connections_opened = 0
#: Seconds between SSH keepalive messages on an otherwise quiet connection.
KEEPALIVE_SECONDS = 30


@dataclass(frozen=True)
class CommandResult:
    command: str
    stdout: str
    stderr: str
    exit_code: int

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 20) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])


@dataclass(frozen=True)
class HostKeyPin:
    """The head node's expected host key: a full public key, or a SHA256 fingerprint.

    Accepts `ssh-ed25519 AAAA...`, a known_hosts line (`host ssh-ed25519 AAAA...`), or
    `SHA256:...` as `ssh-keygen -lf` prints it.
    """

    key_type: str | None
    key_base64: str | None
    fingerprint: str  # "SHA256:..." without padding

    @classmethod
    def parse(cls, text: str) -> "HostKeyPin":
        words = (text or "").split()
        if len(words) == 1 and words[0].startswith("SHA256:"):
            return cls(None, None, words[0].rstrip("="))
        for i, word in enumerate(words[:-1]):
            if word.startswith(("ssh-", "ecdsa-", "sk-")):
                try:
                    blob = base64.b64decode(words[i + 1], validate=True)
                except ValueError:
                    break
                return cls(word, words[i + 1], fingerprint_of(blob))
        raise HostKeyError(
            "head node host key must be a public key ('ssh-ed25519 AAAA...') or a fingerprint "
            f"('SHA256:...'); got {text!r}")

    def matches(self, key: paramiko.PKey) -> bool:
        return fingerprint_of(key.asbytes()) == self.fingerprint


def fingerprint_of(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class _PinnedHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accept the server only if its key has the pinned fingerprint (never trust on first use)."""

    def __init__(self, pin: HostKeyPin):
        self.pin = pin

    def missing_host_key(self, client, hostname, key):
        if not self.pin.matches(key):
            raise HostKeyError(
                f"host key of {hostname} is {fingerprint_of(key.asbytes())} ({key.get_name()}), "
                f"not the pinned {self.pin.fingerprint}: refusing to connect")


def load_private_key(text: str) -> paramiko.PKey:
    """A paramiko key from PEM/OpenSSH text (Ed25519, ECDSA or RSA)."""
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            pass
    raise SSHAuthenticationError("the SSH private key could not be read as Ed25519, ECDSA or RSA "
                                 "(passphrase-protected keys are not supported)")


@dataclass
class HeadNodeConnection:
    host: str
    port: int
    user: str
    private_key: str = field(repr=False)
    host_key: str
    timeout: float = 15.0
    _client: paramiko.SSHClient | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> "HeadNodeConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def connect(self) -> paramiko.SSHClient:
        global connections_opened
        if self._client is not None:
            return self._client
        pin = HostKeyPin.parse(self.host_key)
        client = paramiko.SSHClient()
        if pin.key_type:
            # A full key: paramiko then negotiates that key type and compares it exactly.
            host_id = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
            try:
                pinned = paramiko.PKey.from_type_string(pin.key_type, base64.b64decode(pin.key_base64))
            except Exception as exc:  # paramiko raises SSHException, UnknownKeyType, ValueError...
                raise HostKeyError(f"head node host key is not a usable {pin.key_type} public key: "
                                   f"{exc!r}") from None
            client.get_host_keys().add(host_id, pin.key_type, pinned)
        client.set_missing_host_key_policy(_PinnedHostKeyPolicy(pin))
        try:
            client.connect(self.host, port=self.port, username=self.user,
                           pkey=load_private_key(self.private_key), allow_agent=False,
                           look_for_keys=False, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"host key of {self.where} is {fingerprint_of(exc.key.asbytes())}, not the pinned "
                f"{pin.fingerprint}: refusing to connect") from None
        except HostKeyError:
            client.close()  # refused by the pin: hang up, do not leave the transport running
            raise
        except paramiko.AuthenticationException as exc:
            transport = client.get_transport()
            dropped = transport is None or not transport.is_active()
            client.close()
            if dropped or "timeout" in str(exc):
                # no answer to the key (slow or vanished server) is not a refusal: worth retrying
                raise TransientSSHError(f"cannot reach head node {self.where}: {exc}") from None
            raise SSHAuthenticationError(f"{self.where} refused the SSH key: {exc}") from None
        except (OSError, socket.timeout, paramiko.SSHException, EOFError) as exc:
            client.close()
            raise TransientSSHError(f"cannot reach head node {self.where}: {exc}") from None
        # A polling round may wait minutes on one quiet command (PollWindowSeconds): keepalives
        # keep a NAT or firewall on the way (AWS NAT gateways drop a flow idle for 350 s) from
        # forgetting the connection meanwhile.
        client.get_transport().set_keepalive(KEEPALIVE_SECONDS)
        with _counter_lock:
            connections_opened += 1
        self._client = client
        log.debug("connected to %s", self.where)
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def run(self, argv: Sequence[str], *, stdin: bytes | str | None = None,
            check: bool = True, timeout: float = 600) -> CommandResult:
        """Run one command given as an argument list (quoted here, once)."""
        return self._exec(shlex.join(argv), stdin, check, timeout)

    def run_script(self, script: str, *, check: bool = True, timeout: float = 600) -> CommandResult:
        """Run a bash script sent on stdin to a login shell: no command-line length limit."""
        result = self._exec("bash -l -s", script, False, timeout)
        result = CommandResult(script, result.stdout, result.stderr, result.exit_code)
        if check and not result.ok:
            raise RemoteCommandError(result)
        return result

    @contextlib.contextmanager
    def stream_script(self, script: str, *, timeout: float = 600):
        """Run a bash script; yield its stdout as a binary file, read as it arrives.

        For output too big to hold in memory (job results). The script's stderr should go to
        a file on the head node: it is not read while the stream is. A non-zero exit raises
        RemoteCommandError once the stream is read.
        """
        client = self.connect()
        try:
            channel = client.get_transport().open_session(timeout=self.timeout)
            channel.settimeout(timeout)
            channel.exec_command("bash -l -s")
            channel.sendall(script.encode())
            channel.shutdown_write()
            yield channel.makefile("rb")
            exit_code = _exit_status(channel)
            stderr = channel.recv_stderr(65536) if channel.recv_stderr_ready() else b""
            channel.close()
        except (OSError, socket.timeout, paramiko.SSHException, EOFError) as exc:
            self.close()
            raise TransientSSHError(f"connection to {self.where} failed during a transfer: {exc}") from None
        if exit_code != 0:
            raise RemoteCommandError(CommandResult(script, "", stderr.decode(errors="replace"), exit_code))

    def _exec(self, command: str, stdin, check: bool, timeout: float) -> CommandResult:
        client = self.connect()
        try:
            channel = client.get_transport().open_session(timeout=self.timeout)
            channel.settimeout(timeout)
            channel.exec_command(command)
            if stdin is not None:
                channel.sendall(stdin.encode() if isinstance(stdin, str) else stdin)
            channel.shutdown_write()
            stdout, stderr = _drain(channel, timeout)
            exit_code = _exit_status(channel)
            channel.close()
        except (OSError, socket.timeout, paramiko.SSHException, EOFError) as exc:
            self.close()
            raise TransientSSHError(f"connection to {self.where} failed during a command: {exc}") from None
        result = CommandResult(command, stdout.decode(errors="replace"),
                               stderr.decode(errors="replace"), exit_code)
        if check and not result.ok:
            raise RemoteCommandError(result)
        return result


def _exit_status(channel: paramiko.Channel) -> int:
    """The command's exit status; EOFError if the connection dropped before it came.

    paramiko reports a channel closed without a status as -1. That is also what a command
    killed by a signal gets (sshd sends exit-signal, which paramiko ignores), but then the
    connection is still up; a dead transport (its reader saw EOF or an error) means the
    output may be cut short and the command may still be running: a transient failure.
    """
    code = channel.recv_exit_status()
    transport = channel.get_transport()
    if code == -1 and (transport.saved_exception is not None or not transport.is_active()):
        raise EOFError("the connection closed before the command's exit status")
    return code


def _drain(channel: paramiko.Channel, timeout: float) -> tuple[bytes, bytes]:
    """Read stdout and stderr together, so neither fills its window and blocks the other.

    The server sends the exit status after all output, and paramiko handles messages in
    order, so once the status is in, the buffers hold everything.
    """
    out, err = [], []
    deadline = time.monotonic() + timeout
    while True:
        while channel.recv_ready():
            out.append(channel.recv(65536))
        while channel.recv_stderr_ready():
            err.append(channel.recv_stderr(65536))
        if channel.exit_status_ready() and not (channel.recv_ready() or channel.recv_stderr_ready()):
            return b"".join(out), b"".join(err)
        if time.monotonic() > deadline:
            raise socket.timeout(f"no exit status after {timeout:.0f} s")
        select.select([channel], [], [], 1.0)
