"""Peer identity (``ctx.peer``: groups, pidfd, security label) and the
access policy (``Allow``), from the pure rule to real other-uid clients on
every engine and backend (the test process is root: :func:`call_as` drops
to other uids in a forked child)."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import rpc_support
from conftest import open_fds
from unixrpc import (
    Allow,
    CallContext,
    InvalidParamsError,
    Method,
    Peer,
    PermissionDeniedError,
    Server,
    UnixCredentials,
)
from unixrpc._core import wire
from unixrpc._core.access import AccessRule, AccessTable
from unixrpc._core.server import Handler, ServerConnection, ServerRules
from unixrpc.methods import method_spec
from unixrpc.peer import SO_PEERGROUPS, SO_PEERPIDFD, SO_PEERSEC, pid_of_pidfd, read_peer
from unixrpc.testing import call_as, serving, temporary_socket_path

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="other-uid clients need root"),
    pytest.mark.server,  # every test here runs on every engine
]

NOBODY = 65534


def _kernel_answers(option: int) -> bool:
    """Whether this kernel answers *option* on a connected Unix socket (the
    test then checks the feature, else the fallback)."""
    a, b = socket.socketpair()
    try:
        value = a.getsockopt(socket.SOL_SOCKET, option, 1024)
        if option == SO_PEERPIDFD:
            os.close(struct.unpack("i", value)[0])
        return True
    except OSError as exc:
        if exc.errno != errno.ENOPROTOOPT:
            raise
        return False
    finally:
        a.close()
        b.close()


HAS_GROUPS = _kernel_answers(SO_PEERGROUPS)
HAS_PIDFD = _kernel_answers(SO_PEERPIDFD)
HAS_LABEL = _kernel_answers(SO_PEERSEC)


class Who(Method[dict[str, Any]]):
    pass


class Restart(Method[str]):
    reason: str


class Status(Method[str]):
    pass


class RestartBadly(Method[str], name="Restart"):
    """Restart with params that do not validate."""

    reason: int


# -- the pure rule ---------------------------------------------------------------------


@pytest.mark.anyio_engine_only  # no server: once is enough
def test_rule_allows_by_uid_primary_gid_and_supplementary_groups() -> None:
    rule = AccessRule(frozenset({0}), frozenset({10}), shown="x")
    assert rule.allows(Peer(1, 0, 0))
    assert rule.allows(Peer(1, 1000, 10))
    assert rule.allows(Peer(1, 1000, 1000, groups=(5, 10)))
    assert not rule.allows(Peer(1, 1000, 1000, groups=(5,)))
    # groups unknown (a kernel without SO_PEERGROUPS): only the primary gid counts
    assert not rule.allows(Peer(1, 1000, 1000))
    assert AccessRule(everyone=True).allows(Peer(1, 5, 5))


@pytest.mark.anyio_engine_only  # no server: once is enough
def test_a_methods_rule_replaces_the_server_wide_one() -> None:
    narrow, wide = AccessRule(frozenset({0}), shown="uid 0"), AccessRule(everyone=True, shown="everyone")
    table = AccessTable(narrow, {"Status": wide})
    nobody = Peer(7, NOBODY, NOBODY, groups=())
    assert table.refusal("Status", nobody) is None
    error = table.refusal("Restart", nobody)
    assert isinstance(error, PermissionDeniedError)
    assert (
        error.message == f"Restart is not allowed for uid {NOBODY} (pid 7): the server's policy allows uid 0"
    )
    assert AccessTable(None, {"Restart": narrow}).refusal("Status", nobody) is None


@pytest.mark.anyio_engine_only  # no server: once is enough
def test_allow_checks_what_it_is_given() -> None:
    with pytest.raises(ValueError, match="lets nobody in: give users=, groups= or everyone=True"):
        Allow()
    with pytest.raises(TypeError, match=r"Allow\(groups=...\) takes names and numbers, got 1.5"):
        Allow(groups=[1.5])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="got True"):
        Allow(users=True)
    with pytest.raises(ValueError, match="ids are not negative"):
        Allow(users=-1)
    assert Allow(users="root", groups=("root", 4)) == Allow(users=["root"], groups=["root", 4])
    assert repr(Allow(users="root", groups=4)) == "Allow(users=['root'], groups=[4])"


@pytest.mark.anyio_engine_only  # no server: once is enough
def test_allow_resolves_names_and_says_which_is_unknown() -> None:
    rule = Allow(users=["root", 42], groups=["root", 7]).resolve()
    assert rule.uids == {0, 42}
    assert rule.gids == {0, 7}
    assert rule.shown == "user root (uid 0), uid 42, group root (gid 0), gid 7"
    with pytest.raises(
        ValueError, match="names group 'no-such-group-x', which does not exist on this system"
    ):
        Allow(groups="no-such-group-x").resolve()
    with pytest.raises(ValueError, match=r"names user 'no-such-user-x', which does not exist.*give its uid"):
        Allow(users="no-such-user-x").resolve()


@pytest.mark.anyio_engine_only  # no server: once is enough
def test_server_checks_policy_types() -> None:
    with pytest.raises(TypeError, match=r"policy must be an Allow\(users=..., groups=...\), got 'wheel'"):
        Server(policy="wheel")  # type: ignore[arg-type]
    server = Server()
    with pytest.raises(TypeError, match="allow must be an Allow"):
        server.add_method(Status, lambda request: "ok", allow=0)  # type: ignore[arg-type]


def test_an_unknown_group_fails_the_start(server_engine: str) -> None:
    server = Server(policy=Allow(groups="no-such-group-x"))
    backend = "threads" if server_engine == "threads" else "asyncio"
    with pytest.raises(ValueError, match="no-such-group-x"), serving(server, backend=backend):
        pass


# -- the core: frames in, refusals out -------------------------------------------------


def _core(peer: Any, table: AccessTable | None) -> ServerConnection:
    handlers = {
        cls.__rpc_spec__.name: Handler(method_spec(cls), lambda r: None, wants_context=False, is_async=True)
        for cls in (Restart, Status)
    }
    rules = ServerRules(handlers)
    rules.access = table
    return ServerConnection(rules, 1, peer.pid, peer.uid, peer=peer)


def _replies(core: ServerConnection) -> list[dict[str, Any]]:
    frames = []
    for chunk in core.take_output():
        assert isinstance(chunk, bytes)
        while chunk:
            size, _ = wire.HEADER.unpack_from(chunk)
            frames.append(json.loads(chunk[6 : 6 + size]))
            chunk = chunk[6 + size :]
    return frames


@pytest.mark.anyio_engine_only  # no server: once is enough
def test_core_refuses_a_denied_call_before_its_params_and_closes_its_fds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = AccessTable(AccessRule(frozenset({0}), shown="uid 0"), {})
    core = _core(Peer(99, NOBODY, NOBODY, groups=(100,)), table)
    r, w = os.pipe()
    try:
        core.receive_fds([r])
        body = json.dumps({"id": 1, "method": "Restart", "params": {"reason": 5}}).encode()
        with caplog.at_level(logging.INFO, logger="unixrpc.server.access"):
            assert core.receive_frame(wire.RawFrame(body, 1)) is None  # no call: no handler, no authorize
        [reply] = _replies(core)
        assert reply["error"]["code"] == "unixrpc.PermissionDenied"  # not InvalidParams: checked first
        assert "Restart is not allowed for uid 65534 (pid 99)" in reply["error"]["message"]
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(r)  # the request's descriptor was closed
        [record] = [rec for rec in caplog.records if rec.name == "unixrpc.server.access"]
        assert record.levelno == logging.INFO
        assert record.getMessage() == (
            "denied Restart to pid 99 uid 65534 gid 65534 groups 100: the policy allows uid 0"
        )
    finally:
        os.close(w)


@pytest.mark.anyio_engine_only  # no server: once is enough
def test_core_lets_an_allowed_call_through_and_refuses_without_a_peer() -> None:
    table = AccessTable(AccessRule(frozenset({0}), shown="uid 0"), {})
    core = _core(Peer(1, 0, 0), table)
    body = json.dumps({"id": 1, "method": "Status", "params": {}}).encode()
    assert core.receive_frame(wire.RawFrame(body)) is not None
    rules = ServerRules({})
    rules.access = table
    blind = ServerConnection(rules, 2)  # an engine that gave no peer: no rule but everyone allows it
    assert blind.peer is None


# -- reading the peer: the kernel's features and their fallbacks -----------------------


class _NoOptions:
    """A socket of a kernel without SO_PEERGROUPS, SO_PEERSEC and SO_PEERPIDFD."""

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        if option == socket.SO_PEERCRED:
            return struct.pack("iII", 10, 20, 30)
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    def fileno(self) -> int:
        return -1


class _LabelledPeer(_NoOptions):
    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        if option == SO_PEERSEC:
            return b"system_u:system_r:init_t:s0\0"
        return super().getsockopt(level, option, size)


@pytest.mark.anyio_engine_only  # no server: once is enough
def test_fallbacks_where_the_kernel_lacks_an_option() -> None:
    peer = read_peer(_NoOptions())
    assert peer == UnixCredentials(10, 20, 30)
    assert peer.groups is None
    assert peer.security_label is None
    assert peer.pidfd is None
    assert peer.current_pid() is None
    assert not peer.in_group(99)
    assert peer.in_group(30)
    assert read_peer(_LabelledPeer()).security_label == "system_u:system_r:init_t:s0"


@pytest.mark.anyio_engine_only  # no server: once is enough
def test_read_peer_on_this_kernel() -> None:
    a, b = socket.socketpair()
    before = open_fds()
    peer = read_peer(a)
    try:
        assert peer == (os.getpid(), os.getuid(), os.getgid())
        assert peer.groups == (tuple(os.getgroups()) if HAS_GROUPS else None)
        if HAS_LABEL:
            assert isinstance(peer.security_label, str)
        else:
            assert peer.security_label is None
        if HAS_PIDFD:
            pidfd = peer.pidfd
            assert pidfd is not None
            assert peer.pidfd == pidfd
            assert peer.current_pid() == os.getpid() == pid_of_pidfd(pidfd)
        else:
            assert peer.pidfd is None
            assert peer.current_pid() is None
    finally:
        peer._close()
        a.close()
        b.close()
    assert open_fds() <= before
    with pytest.raises(ValueError, match=r"closed, and its pidfd with it: os.dup\(\) the pidfd"):
        _ = peer.pidfd


@pytest.fixture
def exiting_peer() -> Iterator[tuple[socket.socket, int, int]]:
    """A connection from a child process, which exits when told: (the
    accepted socket, the child's pid, the pipe end that tells it)."""
    with temporary_socket_path() as path:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.connect(path)
                os.read(go_r, 1)
            finally:
                os._exit(0)
        os.close(go_r)
        conn, _ = listener.accept()
        listener.close()
        try:
            yield conn, pid, go_w
        finally:
            conn.close()
            os.close(go_w)  # the child reads EOF and exits, if it was not told
            with contextlib.suppress(ChildProcessError):  # reaped by the test already
                os.waitpid(pid, 0)


@pytest.mark.skipif(not HAS_PIDFD, reason="this kernel has no SO_PEERPIDFD (the fallback is tested above)")
@pytest.mark.anyio_engine_only
def test_the_pidfd_outlives_the_pid(exiting_peer: tuple[socket.socket, int, int]) -> None:
    conn, pid, go = exiting_peer
    peer = read_peer(conn)
    try:
        assert peer.current_pid() == pid == peer.pid
        os.write(go, b"x")
        os.waitpid(pid, 0)  # exited and reaped: the pid may be reused, the pidfd can't be fooled
        with pytest.raises(ProcessLookupError, match=f"the calling process \\(pid {pid}\\) has exited"):
            peer.current_pid()
    finally:
        peer._close()


@pytest.mark.skipif(not HAS_PIDFD, reason="this kernel has no SO_PEERPIDFD (the fallback is tested above)")
@pytest.mark.anyio_engine_only
def test_the_peer_process_already_gone(exiting_peer: tuple[socket.socket, int, int]) -> None:
    conn, pid, go = exiting_peer
    peer = read_peer(conn)
    os.write(go, b"x")
    os.waitpid(pid, 0)
    try:
        try:
            pidfd = peer.pidfd
        except ProcessLookupError:
            return  # a kernel before 6.9 (no pidfd of a reaped process): told as the error
        assert pidfd is not None  # a newer one gives it, and says through it that the process is gone
        assert pid_of_pidfd(pidfd) == -1
        with pytest.raises(ProcessLookupError, match="has exited"):
            peer.current_pid()
    finally:
        peer._close()


# -- over real sockets, every engine, other uids ----------------------------------------


def _identity_server(log: list[str]) -> Server:
    def authorize(ctx: CallContext, request: Any) -> bool:
        log.append(f"authorize {ctx.method} {ctx.peer.uid}")
        return True

    server = Server(policy=Allow(users="root", groups=4242), authorize=authorize, socket_mode=0o666)

    @server.method(Who, allow=Allow(everyone=True))
    def who(request: Who, ctx: CallContext) -> dict[str, Any]:
        peer = ctx.peer
        pidfd = peer.pidfd
        return {
            "pid": peer.pid,
            "uid": peer.uid,
            "gid": peer.gid,
            "groups": peer.groups,
            "label": peer.security_label,
            "pidfd": pidfd is not None,
            "current_pid": peer.current_pid(),
            "in_4242": peer.in_group(4242),
        }

    @server.method(Restart)
    async def restart(request: Restart) -> str:
        log.append(f"restart {request.reason}")
        return "restarting"

    @server.method(Status, allow=Allow(users=NOBODY))
    def status(request: Status) -> str:
        return "fine"

    return server


@pytest.fixture
def shared_dir(sock_dir: str) -> str:
    os.chmod(sock_dir, 0o711)
    return sock_dir


async def _as(path: str, request: Method[Any], **identity: Any) -> Any:
    return await anyio.to_thread.run_sync(functools.partial(call_as, path, request, **identity))


@pytest.mark.anyio
async def test_ctx_peer_of_another_uid(shared_dir: str, no_fd_leak: None) -> None:
    path = os.path.join(shared_dir, "s.sock")
    async with rpc_support.serving(_identity_server([]), path):
        seen = await _as(path, Who(), user=NOBODY, group=NOBODY, groups=[7, 4242])
        many = await _as(path, Who(), user=NOBODY, groups=range(1000, 1300))  # past 1024 bytes
    assert seen["uid"] == NOBODY
    assert seen["gid"] == NOBODY
    if HAS_GROUPS:
        assert seen["groups"] == [7, 4242]
        assert seen["in_4242"]
        assert many["groups"] == list(range(1000, 1300))
    else:
        assert seen["groups"] is None
        assert not seen["in_4242"]
    assert seen["label"] is None if not HAS_LABEL else isinstance(seen["label"], str)
    assert seen["pidfd"] is HAS_PIDFD
    assert seen["current_pid"] == (seen["pid"] if HAS_PIDFD else None)


@pytest.mark.anyio
async def test_policy_allows_and_denies(
    shared_dir: str, caplog: pytest.LogCaptureFixture, no_fd_leak: None
) -> None:
    path = os.path.join(shared_dir, "s.sock")
    log: list[str] = []
    with caplog.at_level(logging.INFO, logger="unixrpc.server.access"):
        async with rpc_support.serving(_identity_server(log), path):
            # server-wide: root, or members of gid 4242 (primary or supplementary)
            assert await _as(path, Restart(reason="a"), user=0) == "restarting"
            assert await _as(path, Restart(reason="b"), user=NOBODY, groups=[4242]) == "restarting"
            assert await _as(path, Restart(reason="c"), user=NOBODY, group=4242) == "restarting"
            with pytest.raises(PermissionDeniedError) as denied:
                await _as(path, Restart(reason="d"), user=NOBODY, groups=[7])
            # denied before params are validated: no schema details for a stranger
            with pytest.raises(PermissionDeniedError):
                await _as(path, RestartBadly(reason=5), user=NOBODY)
            with pytest.raises(InvalidParamsError):
                await _as(path, RestartBadly(reason=5), user=0)
            # a method's own allow replaces the server's: wider for nobody, narrower for root
            assert await _as(path, Status(), user=NOBODY) == "fine"
            with pytest.raises(PermissionDeniedError, match="allows uid 65534"):
                await _as(path, Status(), user=0)
    assert re.fullmatch(
        rf"Restart is not allowed for uid {NOBODY} \(pid \d+\): "
        r"the server's policy allows user root \(uid 0\), gid 4242",
        denied.value.message,
    )
    # checked before authorize and the handler: the denied calls reached neither
    assert [line for line in log if line.startswith("restart")] == ["restart a", "restart b", "restart c"]
    assert "authorize Restart 65534" in log
    assert log.count("authorize Restart 65534") == 2
    records = [rec for rec in caplog.records if rec.name == "unixrpc.server.access"]
    assert [rec.levelno for rec in records] == [logging.INFO] * 3
    assert records[0].getMessage().startswith("denied Restart to pid ")
    assert f"uid {NOBODY} gid {NOBODY} groups {'7' if HAS_GROUPS else 'unknown'}: the policy" in (
        records[0].getMessage()
    )


@pytest.mark.anyio
async def test_the_pidfd_is_closed_with_the_connection(shared_dir: str) -> None:
    path = os.path.join(shared_dir, "s.sock")
    peers: list[Peer] = []
    server = Server(socket_mode=0o666)

    @server.method(Who)
    def who(request: Who, ctx: CallContext) -> dict[str, Any]:
        peers.append(ctx.peer)
        return {"pidfd": ctx.peer.pidfd}

    async with rpc_support.serving(server, path):
        await _as(path, Who(), user=NOBODY)  # warm up what the engine keeps (threads, buffers)
        before = open_fds()
        for _ in range(3):
            answer = await _as(path, Who(), user=NOBODY)
            assert (answer["pidfd"] is not None) is HAS_PIDFD
        deadline = time.monotonic() + 5
        while (open_fds() - before) and time.monotonic() < deadline:
            await anyio.sleep(0.02)
        assert not open_fds() - before, "a pidfd outlived its connection"
    for peer in peers:
        with pytest.raises(ValueError, match="closed"):
            _ = peer.pidfd


def test_testing_helpers_serve_for_other_users(server_engine: str) -> None:
    server = Server(policy=Allow(users=NOBODY))  # socket_mode stays 0600: other_users opens it

    @server.method(Status)
    def status(request: Status) -> str:
        return "fine"

    backend = "threads" if server_engine == "threads" else "trio"
    with serving(server, backend=backend, other_users=True) as path:
        assert os.stat(path).st_mode & 0o777 == 0o666
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o711
        assert call_as(path, Status(), user="nobody") == "fine"
    with serving(server, backend=backend) as path:
        from unixrpc import SocketPermissionError

        with pytest.raises(SocketPermissionError, match="permission denied connecting to"):
            call_as(path, Status(), user=NOBODY)


@pytest.mark.anyio_engine_only  # no server: once is enough
def test_call_as_without_the_right_to_switch() -> None:
    pid = os.fork()  # no server thread runs: the child fails before it would connect
    if pid == 0:  # a process that is not root cannot call as another user
        code = 1
        try:
            os.setresuid(NOBODY, NOBODY, NOBODY)
            try:
                call_as("/nonexistent/s.sock", Status(), user=1234)
            except PermissionError as exc:
                code = 0 if "could not become uid 1234" in str(exc) and "CAP_SETUID" in str(exc) else 2
        finally:
            os._exit(code)
    _, status_code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status_code) == 0
