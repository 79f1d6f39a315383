"""remote/ssh.py: the host-key pin, quoting, results and errors, and the SSH exchange itself
against a real in-process SSH server (paramiko's server side on loopback, running each command
with a real local bash). Real OpenSSH on loopback is tests/e2e's.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import paramiko
import pytest

from stepcluster.errors import (
    HostKeyError, RemoteCommandError, SSHAuthenticationError, TransientSSHError,
)
from stepcluster.remote import ssh
from stepcluster.remote.ssh import CommandResult, HeadNodeConnection, HostKeyPin, fingerprint_of


# Every test here takes a second or two; a hang (a broken timeout) fails in 30 s, not 300.
pytestmark = pytest.mark.timeout(30)


def _ed25519() -> tuple[paramiko.PKey, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private = ed25519.Ed25519PrivateKey.generate()
    text = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption()).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(text)), text


def _text_of(key: paramiko.PKey) -> str:
    out = io.StringIO()
    key.write_private_key(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def keys():
    """Two client key pairs: (paramiko key, its private key text)."""
    return _ed25519(), _ed25519()


@pytest.fixture(scope="module")
def host_keys():
    """The server's host keys: Ed25519 (what paramiko prefers) and ECDSA."""
    return _ed25519()[0], paramiko.ECDSAKey.generate()


def public_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


# --- a real SSH server on 127.0.0.1 -------------------------------------------------------------

class _Interface(paramiko.ServerInterface):
    """Server-side policy: one user with one public key; sessions that run `exec` requests."""

    def __init__(self, server: "SSHServer", sock: socket.socket):
        self.server, self.sock = server, sock

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        self.server.offered.append(fingerprint_of(key.asbytes()))
        time.sleep(self.server.auth_delay)  # a slow sshd (e.g. a busy head node booting)
        if self.server.hang_up_on_auth:
            self.sock.shutdown(socket.SHUT_RDWR)  # the head node goes away mid-handshake
        if username == self.server.user and key.asbytes() == self.server.client_key.asbytes():
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        time.sleep(self.server.channel_delay)
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED_CHANNEL_OPEN

    def check_channel_exec_request(self, channel, command):
        command = command.decode()
        self.server.commands.append(command)
        thread = threading.Thread(target=self.server.execute, args=(channel, command), daemon=True)
        self.server.threads.append(thread)
        thread.start()
        return True


class SSHServer:
    """Accepts connections in a thread; each exec request runs `bash -c COMMAND` for real.

    As sshd does: the channel's data goes to the command's stdin (EOF closes it), its stdout
    and stderr come back on the channel's two streams, then the exit status, then the close.
    A command killed by a signal gets no exit status (sshd sends exit-signal, which paramiko
    ignores).
    """

    user = "hpc"

    def __init__(self, host_keys, client_key, home):
        self.host_keys, self.client_key, self.home = host_keys, client_key, home
        self.auth_delay = self.channel_delay = 0.0
        self.hang_up_on_auth = self.hang_up_after_exit = False
        self.offered: list[str] = []  # fingerprints of the client keys tried
        self.commands: list[str] = []
        self.transports: list[paramiko.Transport] = []
        self.processes: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # so the accept loop sees the stop flag
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            transport = paramiko.Transport(sock)
            for key in self.host_keys:
                transport.add_server_key(key)
            self.transports.append(transport)
            # with an event, start_server returns at once: the transport runs in its own thread
            transport.start_server(event=threading.Event(), server=_Interface(self, sock))

    def execute(self, channel: paramiko.Channel, command: str):
        process = subprocess.Popen(["bash", "-c", command], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.home,
                                   env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"},
                                   start_new_session=True)  # a process group, killed at teardown
        self.processes.append(process)

        def feed_stdin():
            try:
                while data := channel.recv(32768):
                    process.stdin.write(data)
                process.stdin.close()
            except (OSError, EOFError):
                pass  # the command exited without reading it all, or the client went away

        def pump(stream, send):
            try:
                while data := stream.read1(32768):
                    send(data)
            except (OSError, EOFError):
                pass

        threading.Thread(target=feed_stdin, daemon=True).start()
        pumps = [threading.Thread(target=pump, args=(process.stdout, channel.sendall)),
                 threading.Thread(target=pump, args=(process.stderr, channel.sendall_stderr))]
        for thread in pumps:
            thread.start()
        for thread in pumps:
            thread.join()
        code = process.wait()
        try:
            if code >= 0:
                channel.send_exit_status(code)
            channel.close()
            if self.hang_up_after_exit:
                channel.get_transport().close()
        except (OSError, EOFError):
            pass

    def drop(self):
        """Hang up every connection, as a crashed or rebooted head node does."""
        for transport in self.transports:
            transport.close()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for process in self.processes:  # the commands still running, and their children
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for transport in self.transports:
            transport.close()
            transport.join(5)
        for thread in self.threads:
            thread.join(5)
        for process in self.processes:
            process.wait(5)
            for stream in (process.stdin, process.stdout, process.stderr):
                stream.close()


@pytest.fixture
def server(host_keys, keys, tmp_path):
    (client_key, _), _ = keys
    running = SSHServer(host_keys, client_key, tmp_path)
    yield running
    running.close()


@pytest.fixture
def connect(server, keys, host_keys):
    """HeadNodeConnection(...) to the server, pinned to its Ed25519 key; closed at teardown."""
    (_, client_text), _ = keys
    made = []

    def make(**overrides):
        options = dict(host="127.0.0.1", port=server.port, user=server.user,
                       private_key=client_text, host_key=public_line(host_keys[0]), timeout=5.0)
        made.append(HeadNodeConnection(**{**options, **overrides}))
        return made[-1]
    yield make
    for connection in made:
        connection.close()


def _gone(transport: paramiko.Transport, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while transport.is_active() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not transport.is_active()


# --- the host-key pin ---------------------------------------------------------------------------

def test_a_pin_is_a_key_a_known_hosts_line_or_a_fingerprint(keys):
    (key, _), _ = keys
    fingerprint = fingerprint_of(key.asbytes())
    assert fingerprint == "SHA256:" + base64.b64encode(
        hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    assert not fingerprint.endswith("=")
    for text in (public_line(key), f"[10.0.0.5]:22 {public_line(key)}", f"{public_line(key)} root@head",
                 fingerprint, fingerprint + "="):
        assert HostKeyPin.parse(text).fingerprint == fingerprint, text
    pin = HostKeyPin.parse(f"[10.0.0.5]:22 {public_line(key)} root@head")
    assert (pin.key_type, pin.key_base64) == ("ssh-ed25519", key.get_base64())
    assert HostKeyPin.parse(fingerprint).key_type is None
    assert HostKeyPin.parse(public_line(paramiko.ECDSAKey.generate())).key_type == "ecdsa-sha2-nistp256"
    security_key = "sk-ssh-ed25519@openssh.com " + base64.b64encode(b"sk blob").decode()
    assert HostKeyPin.parse(security_key).fingerprint == fingerprint_of(b"sk blob")


@pytest.mark.parametrize("text", ["", None, "ssh-ed25519", "ssh-ed25519 not*base64",
                                  "ssh-ed25519 AAAA*AAAA",  # base64 with junk in it: not skipped
                                  "MD5:aa:bb", "hello world", "SHA256:abc extra"])
def test_anything_else_is_refused_as_a_pin(text):
    with pytest.raises(HostKeyError, match=r"must be a public key \('ssh-ed25519 AAAA...'\) or a "
                                           r"fingerprint \('SHA256:...'\); got "):
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
    assert str(raised.value) == (f"host key of head is {fingerprint_of(other.asbytes())} (ssh-ed25519), "
                                 f"not the pinned {fingerprint_of(key.asbytes())}: refusing to connect")


def test_the_pinned_server_is_reached_by_key_or_fingerprint(connect, host_keys):
    ed25519, _ = host_keys
    for pin in (public_line(ed25519), f"[127.0.0.1]:1 {public_line(ed25519)} root@head",
                fingerprint_of(ed25519.asbytes())):
        with connect(host_key=pin) as connection:
            assert connection.run(["true"]).ok


def test_a_pinned_key_of_another_type_is_the_one_negotiated(connect, host_keys):
    """The server offers Ed25519 and ECDSA; a pinned ECDSA key must not meet the Ed25519 one."""
    ed25519, ecdsa = host_keys
    assert connect(host_key=public_line(ecdsa)).run(["true"]).ok
    # a bare fingerprint cannot steer the negotiation: the preferred Ed25519 key is refused
    with pytest.raises(HostKeyError, match=re.escape(f"is {fingerprint_of(ed25519.asbytes())} (ssh-ed25519), "
                                                     f"not the pinned {fingerprint_of(ecdsa.asbytes())}")):
        connect(host_key=fingerprint_of(ecdsa.asbytes())).connect()


def test_a_head_node_on_port_22_is_pinned_by_host_name(connect, server, host_keys, monkeypatch):
    """Real head nodes listen on 22, where the known-hosts entry is the bare host name."""
    resolve = socket.getaddrinfo

    def head_on_22(host, port, *args, **kwargs):  # "head.test:22" is our server (as a NAT would)
        if (host, port) == ("head.test", 22):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.port))]
        return resolve(host, port, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", head_on_22)
    _, ecdsa = host_keys
    assert connect(host="head.test", port=22, host_key=public_line(ecdsa)).run(["true"]).ok


@pytest.mark.parametrize("pin_of", ["key", "fingerprint"])
def test_a_server_with_another_key_is_refused_naming_both_fingerprints(connect, server, keys, pin_of):
    (other, _), _ = keys
    pin = public_line(other) if pin_of == "key" else fingerprint_of(other.asbytes())
    connection = connect(host_key=pin)
    with pytest.raises(HostKeyError) as raised:
        connection.run(["true"])
    served = fingerprint_of(server.host_keys[0].asbytes())
    message = str(raised.value)
    assert served in message and f"not the pinned {fingerprint_of(other.asbytes())}" in message
    assert "refusing to connect" in message and f"127.0.0.1:{server.port}" in message.replace("]", "")
    assert server.commands == []  # never trust on first use: nothing ran
    assert _gone(server.transports[0])  # and the refused server is hung up on
    assert connection._client is None


def test_no_usable_pin_no_connection(connect, server):
    with pytest.raises(HostKeyError, match="must be a public key"):
        connect(host_key="").connect()
    # valid base64, but not a key of that type, or a type paramiko cannot check
    for pin in ("ssh-ed25519 AAAA", "ssh-rsa " + server.host_keys[0].get_base64(), "ssh-foo AAAA"):
        with pytest.raises(HostKeyError, match=f"head node host key is not a usable {pin.split()[0]} "
                                               "public key: "):
            connect(host_key=pin).connect()
    assert server.transports == []


# --- the private key ----------------------------------------------------------------------------

def test_private_keys_load_or_fail_clearly(keys, tmp_path):
    (key, text), _ = keys
    assert ssh.load_private_key(text).get_fingerprint() == key.get_fingerprint()
    for other in (paramiko.ECDSAKey.generate(), paramiko.RSAKey.generate(1024)):
        loaded = ssh.load_private_key(_text_of(other))
        assert type(loaded) is type(other) and loaded.asbytes() == other.asbytes()
    locked = io.StringIO()
    paramiko.RSAKey.generate(1024).write_private_key(locked, password="secret")
    for bad in ("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n", "", locked.getvalue()):
        with pytest.raises(SSHAuthenticationError) as raised:
            ssh.load_private_key(bad)
        assert str(raised.value) == ("the SSH private key could not be read as Ed25519, ECDSA or RSA "
                                     "(passphrase-protected keys are not supported)")


def test_an_unreadable_private_key_fails_before_dialling(connect, server):
    with pytest.raises(SSHAuthenticationError, match="could not be read"):
        connect(private_key="not a key").run(["true"])
    assert server.commands == []


def test_a_refused_key_is_an_authentication_error_not_retried(connect, server, keys):
    _, (_, other_text) = keys
    for connection in (connect(private_key=other_text), connect(user="root")):
        with pytest.raises(SSHAuthenticationError) as raised:
            connection.run(["true"])
        assert str(raised.value).startswith(f"{connection.user}@127.0.0.1:{server.port} refused the SSH key: ")
        assert connection._client is None
    assert server.commands == []
    assert all(_gone(transport) for transport in server.transports)


@pytest.fixture
def agent_and_home_keys(tmp_path, keys, monkeypatch):
    """The accepted key also in an ssh-agent and in ~/.ssh: the connection must use neither."""
    (key, text), _ = keys
    home = tmp_path / "client-home"
    (home / ".ssh").mkdir(parents=True)
    for name in ("id_ed25519", "id_rsa", "id_ecdsa"):
        (home / ".ssh" / name).write_text(text)
        (home / ".ssh" / name).chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        subprocess.run(["ssh-add", "-q", str(home / ".ssh" / "id_ed25519")], check=True,
                       env={"SSH_AUTH_SOCK": str(socket_path), "PATH": "/usr/bin:/bin"})
        assert [k.asbytes() for k in paramiko.Agent().get_keys()] == [key.asbytes()]
        yield
    finally:
        agent.terminate()
        agent.wait(5)


def test_only_the_configured_key_is_offered_never_the_agent_or_home_keys(
        connect, server, keys, agent_and_home_keys):
    _, (other, other_text) = keys
    with pytest.raises(SSHAuthenticationError):
        connect(private_key=other_text).connect()
    assert server.offered == [fingerprint_of(other.asbytes())]


def test_a_server_gone_during_authentication_is_transient(connect, server):
    server.hang_up_on_auth = True
    with pytest.raises(TransientSSHError, match=f"cannot reach head node hpc@127.0.0.1:{server.port}: "):
        connect().connect()


def test_a_slow_authentication_is_transient_not_a_refused_key(connect, server):
    server.auth_delay = 1.0
    started = time.monotonic()
    with pytest.raises(TransientSSHError, match=f"cannot reach head node hpc@127.0.0.1:{server.port}"):
        connect(timeout=0.3).connect()
    assert time.monotonic() - started < 0.9  # the connection's timeout, not paramiko's default


# --- connecting ---------------------------------------------------------------------------------

def test_a_connection_is_opened_lazily_once_and_closed_idempotently(connect, server):
    connection = connect()
    assert server.transports == [] and connection._client is None
    before = ssh.connections_opened
    with connection as entered:
        assert entered is connection
        assert connection.run(["echo", "1"]).stdout == "1\n"
        assert connection.run_script("echo 2\n").stdout == "2\n"
        assert connection.connect() is connection.connect()
    assert ssh.connections_opened == before + 1 and len(server.transports) == 1
    assert _gone(server.transports[0])  # leaving the block hung up
    connection.close()  # twice: nothing happens
    assert connection.run(["true"]).ok  # and it reconnects when used again
    assert ssh.connections_opened == before + 2 and len(server.transports) == 2
    assert connection.where == f"hpc@127.0.0.1:{server.port}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_refused_connection_is_transient(connect, server):
    port = _free_port()
    before = ssh.connections_opened
    with pytest.raises(TransientSSHError) as raised:
        connect(port=port).run(["true"])
    assert str(raised.value).startswith(f"cannot reach head node hpc@127.0.0.1:{port}: ")
    assert ssh.connections_opened == before


def test_a_silent_server_times_out_quickly_and_is_transient(connect):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody speaks
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TransientSSHError, match=f"cannot reach head node hpc@127.0.0.1:{port}: "):
            connect(port=port, timeout=0.3).connect()
        assert time.monotonic() - started < 3  # the connection's timeout, not paramiko's 15 s


def test_an_unanswered_dial_times_out_quickly_and_is_transient(connect):
    with socket.socket() as full:  # a listener whose accept queue is full: new SYNs are dropped
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        try:
            while len(fillers) < 5:
                filler = socket.socket()
                fillers.append(filler)
                filler.settimeout(0.2)
                try:
                    filler.connect(("127.0.0.1", port))
                except socket.timeout:
                    break
            started = time.monotonic()
            with pytest.raises(TransientSSHError, match=f"cannot reach head node hpc@127.0.0.1:{port}: "):
                connect(port=port, timeout=0.5).connect()
            assert time.monotonic() - started < 3  # not the kernel's two minutes of SYN retries
        finally:
            for filler in fillers:
                filler.close()


def test_a_reset_connection_is_transient(connect):
    with socket.create_server(("127.0.0.1", 0)) as resetting:
        def reset():
            peer, _ = resetting.accept()
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()  # with linger 0: a TCP reset
        thread = threading.Thread(target=reset)
        thread.start()
        with pytest.raises(TransientSSHError, match="cannot reach head node"):
            connect(port=resetting.getsockname()[1]).connect()
        thread.join(5)


# --- commands -----------------------------------------------------------------------------------

def test_argument_lists_are_quoted_once_never_joined_with_spaces(connect, server):
    argv = ["printf", "<%s>\n", "12 34", "$(echo injected)", "a'b", "*", ""]
    result = connect().run(argv)
    assert result.stdout == "<12 34>\n<$(echo injected)>\n<a'b>\n<*>\n<>\n"
    assert server.commands == ["printf '<%s>\n' '12 34' '$(echo injected)' 'a'\"'\"'b' '*' ''"]
    assert result.command == server.commands[0] and result.ok and result.stderr == ""


def test_stdin_is_sent_as_text_or_bytes_and_closed(connect):
    connection = connect()
    assert connection.run(["cat"], stdin="héllo\n").stdout == "héllo\n"
    assert connection.run(["wc", "-c"], stdin=b"\x00\xff\x01").stdout.strip() == "3"
    assert connection.run(["cat"], timeout=5).stdout == ""  # no stdin: EOF at once, no wait


def test_exit_codes_and_output_come_back(connect):
    connection = connect()
    result = connection.run(["bash", "-c", "echo out; echo err >&2; exit 7"], check=False)
    assert (result.stdout, result.stderr, result.exit_code, result.ok) == ("out\n", "err\n", 7, False)
    with pytest.raises(RemoteCommandError) as raised:
        connection.run(["bash", "-c", "echo out; echo err >&2; exit 7"])
    assert raised.value.result == result
    assert str(raised.value) == f"remote command failed (exit 7): {result.command}\nerr"
    assert connection.run(["bash", "-c", "exit 0"]).exit_code == 0


def test_much_output_on_both_streams_does_not_block(connect):
    """More than a channel window (2 MiB) on stdout and stderr at once: both are read together."""
    script = "head -c 3000000 /dev/zero | tr '\\0' o; head -c 3000000 /dev/zero | tr '\\0' e >&2"
    result = connect().run(["bash", "-c", script], timeout=60)
    assert result.stdout == "o" * 3000000 and result.stderr == "e" * 3000000


def test_undecodable_output_is_replaced_not_an_error(connect):
    result = connect().run(["bash", "-c", "printf '\\377ok'; printf 'e\\377' >&2"])
    assert (result.stdout, result.stderr) == ("\ufffdok", "e\ufffd")


def test_scripts_go_on_stdin_to_a_login_shell_and_failures_carry_their_result(connect, server):
    connection = connect()
    script = "shopt -q login_shell && echo login\necho \"$0\" >&2\nexit 3\n"
    with pytest.raises(RemoteCommandError) as raised:
        connection.run_script(script)
    assert server.commands == ["bash -l -s"]
    result = raised.value.result
    assert (result.command, result.stdout, result.exit_code) == (script, "login\n", 3)
    assert str(raised.value) == f"remote command failed (exit 3): {script}\n{result.tail()}"
    assert connection.run_script(script, check=False) == result
    long = "".join(f"echo {i}\n" for i in range(20000))  # far beyond a command line: fine on stdin
    assert connection.run_script(long).stdout.splitlines()[-1] == "19999"


def test_a_command_that_outlives_its_timeout_is_transient(connect, server):
    connection = connect()
    connection.connect()
    before = ssh.connections_opened
    started = time.monotonic()
    with pytest.raises(TransientSSHError) as raised:
        connection.run(["sleep", "30"], timeout=0.6)
    assert time.monotonic() - started < 1.7  # checked at least once a second
    assert str(raised.value) == (f"connection to hpc@127.0.0.1:{server.port} failed during a command: "
                                 "no exit status after 1 s")
    assert connection._client is None  # the broken connection was dropped ...
    assert connection.run(["true"]).ok and ssh.connections_opened == before + 1  # ... and redialled


def test_a_connection_dropped_during_a_command_is_transient(connect, server):
    connection = connect()
    connection.connect()
    threading.Timer(0.5, server.drop).start()
    with pytest.raises(TransientSSHError) as raised:
        connection.run(["bash", "-c", "echo started; sleep 10"], check=False)
    assert str(raised.value) == (f"connection to hpc@127.0.0.1:{server.port} failed during a command: "
                                 "the connection closed before the command's exit status")
    assert connection._client is None


def test_closing_the_connection_interrupts_a_running_command(connect):
    connection = connect()
    connection.connect()
    threading.Timer(0.5, connection.close).start()
    with pytest.raises(TransientSSHError, match="the connection closed before the command's exit status"):
        connection.run(["sleep", "10"])


def test_a_command_killed_by_a_signal_fails_without_dropping_the_connection(connect):
    connection = connect()
    assert connection.run(["bash", "-c", "kill -KILL $$"], check=False).exit_code == -1
    with pytest.raises(RemoteCommandError) as raised:
        connection.run(["bash", "-c", "echo dying >&2; kill -KILL $$"])
    assert (raised.value.result.exit_code, raised.value.result.stderr) == (-1, "dying\n")
    before = ssh.connections_opened
    assert connection.run(["true"]).ok and ssh.connections_opened == before  # same connection


def test_a_head_node_slow_to_open_a_session_is_transient(connect, server):
    connection = connect(timeout=0.3)
    connection.connect()
    server.channel_delay = 2.0
    started = time.monotonic()
    with pytest.raises(TransientSSHError, match="failed during a command"):
        connection.run(["true"])
    assert time.monotonic() - started < 1.5


def test_stdin_nobody_reads_times_out_instead_of_blocking(connect):
    """More stdin than the channel window while the command does not read: the send times out."""
    with pytest.raises(TransientSSHError, match="failed during a command"):
        connect().run(["sleep", "30"], stdin=b"x" * 5_000_000, timeout=1)


def test_connecting_is_logged(connect, server, caplog):
    with caplog.at_level("DEBUG", logger="stepcluster.remote.ssh"):
        connect().connect()
    assert f"connected to hpc@127.0.0.1:{server.port}" in caplog.messages


def test_a_result_tail_prefers_stderr_and_keeps_the_last_lines():
    result = CommandResult("c", "o1\no2\n", "e1\ne2\ne3\n", 1)
    assert not result.ok and result.tail(2) == "e2\ne3"
    assert CommandResult("c", "o1\no2\n", "  \n", 1).tail(1) == "o2"
    many = CommandResult("c", "", "".join(f"e{i}\n" for i in range(30)), 0)
    assert many.ok and many.tail() == "\n".join(f"e{i}" for i in range(10, 30))


def test_a_connection_never_stores_the_key_in_its_repr(keys):
    _, (_, text) = keys
    assert text not in repr(HeadNodeConnection("h", 22, "u", text, "SHA256:x"))


# --- streaming ----------------------------------------------------------------------------------

def test_a_stream_yields_stdout_as_it_comes(connect, server):
    connection = connect()
    script = "head -c 3000000 /dev/zero | tr '\\0' x\necho small-stderr >&2\n"
    with connection.stream_script(script) as stream:
        assert stream.read(5) == b"xxxxx"
        assert len(stream.read()) == 3000000 - 5
    assert server.commands == ["bash -l -s"]
    with connection.stream_script("shopt -q login_shell && printf login") as stream:
        assert stream.read() == b"login"


def test_a_failing_stream_raises_with_its_stderr_once_read(connect):
    script = "echo partial; echo 'tar: no such job' >&2; exit 2\n"
    with pytest.raises(RemoteCommandError) as raised:
        with connect().stream_script(script) as stream:
            assert stream.read() == b"partial\n"
    assert raised.value.result == CommandResult(script, "", "tar: no such job\n", 2)


def test_a_stalled_stream_is_transient(connect, server):
    connection = connect()
    started = time.monotonic()
    with pytest.raises(TransientSSHError) as raised:
        with connection.stream_script("printf a; sleep 30", timeout=0.5) as stream:
            assert stream.read(1) == b"a"
            stream.read()
    assert time.monotonic() - started < 5
    assert str(raised.value).startswith(f"connection to hpc@127.0.0.1:{server.port} failed during a transfer: ")
    assert connection._client is None


def test_a_stream_that_finished_before_the_connection_dropped_is_complete(connect, server):
    server.hang_up_after_exit = True
    with connect().stream_script("printf done") as stream:
        assert stream.read() == b"done"
        assert _gone(server.transports[0])  # the head node went away after the command ended


def test_a_stream_cut_off_by_a_dropped_connection_is_transient(connect, server):
    connection = connect()
    connection.connect()
    with pytest.raises(TransientSSHError, match="failed during a transfer"):
        with connection.stream_script("echo started; sleep 10") as stream:
            assert stream.readline() == b"started\n"
            server.drop()
            stream.read()
    assert connection._client is None
