"""The hot-path shortcuts, checked with real sockets: the FD schema walk
(schema_has_fds, MethodSpec.params_have_fds / result_has_fds), serialize()
without an FdContext and its tripwire for descriptors hidden behind ``Any``,
the shared empty FdContext for frames without descriptors, results of exactly
the declared class skipping pydantic's type-check warnings, and the lazily
built CallContext."""

from __future__ import annotations

import array
import gc
import json
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Optional, Union

import anyio
import pytest
from pydantic import BaseModel, SerializerFunctionWrapHandler, TypeAdapter, field_serializer

from conftest import open_fds
from rpc_support import Driver, serving, serving_in_thread
from unixrpc import (
    FD,
    AsyncClient,
    CallContext,
    Client,
    FileDescriptor,
    InternalError,
    InvalidParamsError,
    InvalidResultError,
    Method,
    PermissionDeniedError,
    Server,
    StreamMethod,
)
from unixrpc.fds import FdContext, schema_has_fds, serialize

pytestmark = pytest.mark.server  # every test here runs on every engine

# -- models and methods ------------------------------------------------------------------------


class Carrier(BaseModel):
    """A model with an FD field."""

    label: str
    fd: FD


class IntCarrier(BaseModel):
    """Carrier's wire shape, with the descriptor as a plain integer."""

    label: str
    fd: int


class Plain(BaseModel):
    a: int
    tags: list[str] = []


class Nested(BaseModel):
    name: str
    inner: Carrier


class Tree(BaseModel):
    """Recursive, with a descriptor somewhere down the tree."""

    name: str
    children: list[Tree] = []
    fd: FD | None = None


class PlainTree(BaseModel):
    name: str
    children: list[PlainTree] = []


class Loose(BaseModel):
    """Its schema holds no FD field, but a value may (in ``value``)."""

    value: Any


class User(BaseModel):
    uid: int
    name: str


class Admin(User):
    level: int = 9


# the tripwire, params: the client types the field Any, the server types it properly


class Deliver(Method[str]):
    carrier: Carrier


class DeliverAny(Method[str], name="Deliver"):
    carrier: Any


class DeliverNote(Method[None]):
    carrier: Carrier


class DeliverNoteAny(Method[None], name="DeliverNote"):
    carrier: Any


# the tripwire, results: the server types the result Any, the client types it properly


class HandOverAny(Method[Any], name="HandOver"):
    label: str


class HandOver(Method[Carrier]):
    label: str


class HandOverStreamAny(StreamMethod[Any], name="HandOverStream"):
    count: int


class HandOverStream(StreamMethod[Carrier]):
    count: int


class Boxed(BaseModel):
    value: Carrier


class BoxOverLoose(Method[Loose], name="BoxOver"):
    """Its result type is a plain model: a result of exactly that class takes
    the trusted path (no warnings), and its ``Any`` field holds an FD."""

    label: str


class BoxOver(Method[Boxed]):
    label: str


# an integer in an FD field, no descriptor in the frame


class TakeFd(Method[str]):
    data: FD


class TakeFdAsInt(Method[str], name="TakeFd"):
    data: int


class GiveFdAsInt(Method[IntCarrier], name="GiveFd"):
    index: int


class GiveFd(Method[Carrier]):
    index: int


class GiveFdsAsInt(StreamMethod[IntCarrier], name="GiveFds"):
    index: int


class GiveFds(StreamMethod[Carrier]):
    index: int


# results of the declared type, or not


class AnInt(Method[int]):
    kind: str


class AStr(Method[str]):
    kind: str


class ANone(Method[None]):
    kind: str


class AUser(Method[User]):
    kind: str


class AList(Method[list[int]]):
    kind: str


# CallContext


class Seen(BaseModel):
    """A CallContext as a handler saw it."""

    method: str
    call_id: int | None
    connection_id: int
    pid: int
    uid: int
    gid: int


def seen(ctx: CallContext) -> Seen:
    return Seen(
        method=ctx.method,
        call_id=ctx.call_id,
        connection_id=ctx.connection_id,
        pid=ctx.peer.pid,
        uid=ctx.peer.uid,
        gid=ctx.peer.gid,
    )


class Who(Method[Seen], name="ctx.Who"):
    pass


class WhoInThread(Method[Seen], name="ctx.WhoInThread"):
    pass


class WhoStream(StreamMethod[Seen], name="ctx.WhoStream"):
    count: int


class Remember(Method[None], name="ctx.Remember"):
    tag: str


class Twice(Method[int]):
    """A handler without ctx (async)."""

    x: int


class Thrice(Method[int]):
    """A handler without ctx (a plain function, in a worker thread)."""

    x: int


class Forbidden(Method[int]):
    pass


# -- helpers -----------------------------------------------------------------------------------


def memfd_with(content: bytes) -> int:
    fd = os.memfd_create("fast-paths", os.MFD_CLOEXEC)
    os.write(fd, content)
    return fd


def pipe_with(content: bytes) -> tuple[int, int]:
    """A pipe with *content* waiting in it: (read end, write end)."""
    r, w = os.pipe()
    os.write(w, content)
    return r, w


def target(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def describe(fd: int) -> str:
    try:
        return target(fd)
    except OSError:
        return "?"


def is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def assert_no_new_fds(before: set[int]) -> None:
    """No descriptor left open that was not open at *before* (a server thread
    may still be closing a connection: give it a moment)."""
    deadline = time.monotonic() + 2.0
    while True:
        gc.collect()
        leaked = open_fds() - before
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not leaked, f"leaked descriptors: {sorted(leaked)} -> {[describe(fd) for fd in leaked]}"


async def assert_no_new_fds_soon(before: set[int]) -> None:
    """assert_no_new_fds for async tests: the server may run in this loop, so
    wait without blocking it (it closes a call's descriptors after the reply)."""
    with anyio.move_on_after(2.0):
        while open_fds() - before:
            gc.collect()
            await anyio.sleep(0.01)
    assert_no_new_fds(before)


async def wait_for(predicate: Callable[[], bool], seconds: float = 3.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.005)


class Record:
    """What the server's handlers and hook saw (shared with the test)."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.contexts: list[Seen] = []
        self.hook: list[tuple[Seen, Any]] = []


def fast_server(record: Record, **kwargs: Any) -> Server:
    server = Server(**kwargs)

    @server.method(Deliver)
    def deliver(req: Deliver) -> str:  # a plain def: the descriptor is read in a worker thread
        # closed before the reply goes: the server shares this process, and a
        # descriptor left for the GC may hold the number a test checks is closed
        with req.carrier.fd:
            return f"{req.carrier.label}:{os.read(req.carrier.fd.fileno(), 100).decode()}"

    @server.method(DeliverNote)
    async def deliver_note(req: DeliverNote) -> None:
        record.delivered.append(f"{req.carrier.label}:{os.read(req.carrier.fd.fileno(), 100).decode()}")

    @server.method(HandOverAny)
    async def hand_over(req: HandOverAny) -> Any:
        fd = memfd_with(f"memfd for {req.label}".encode())
        return Carrier(label=req.label, fd=FileDescriptor.transfer(fd))

    @server.method(HandOverStreamAny)
    async def hand_over_stream(req: HandOverStreamAny) -> AsyncIterator[Any]:
        for i in range(req.count):
            yield Carrier(label=str(i), fd=FileDescriptor.transfer(memfd_with(f"item {i}".encode())))

    @server.method(BoxOverLoose)
    async def box_over(req: BoxOverLoose) -> Loose:
        fd = memfd_with(f"boxed {req.label}".encode())
        return Loose(value=Carrier(label=req.label, fd=FileDescriptor.transfer(fd)))

    @server.method(TakeFd)
    async def take_fd(req: TakeFd) -> str:
        return target(req.data.fileno())

    @server.method(GiveFdAsInt)
    async def give_fd(req: GiveFdAsInt) -> IntCarrier:
        return IntCarrier(label="no descriptor", fd=req.index)

    @server.method(GiveFdsAsInt)
    async def give_fds(req: GiveFdsAsInt) -> AsyncIterator[IntCarrier]:
        yield IntCarrier(label="no descriptor", fd=req.index)

    @server.method(AnInt)
    async def an_int(req: AnInt) -> Any:
        return {"int": 5, "str": "x", "float": 2.5, "none": None}[req.kind]

    @server.method(AStr)
    async def a_str(req: AStr) -> Any:
        return {"str": "text", "int": 7}[req.kind]

    @server.method(ANone)
    async def a_none(req: ANone) -> Any:
        return {"none": None, "int": 1}[req.kind]

    @server.method(AUser)
    def a_user(req: AUser) -> Any:
        user = User(uid=1, name="alice")
        if req.kind == "subclass":
            return Admin(uid=2, name="root", level=0)
        if req.kind == "dict":
            return {"uid": 3, "name": "from a dict"}
        if req.kind == "assigned-wrong":
            user.uid = "not a number"  # type: ignore[assignment]  # no validate_assignment
        if req.kind == "assigned-coercible":
            user.uid = "7"  # type: ignore[assignment]
        return user

    @server.method(AList)
    async def a_list(req: AList) -> Any:
        return {"ok": [1, 2], "bad": [1, "x"]}[req.kind]

    @server.method(Who)
    async def who(req: Who, ctx: CallContext) -> Seen:
        return seen(ctx)

    @server.method(WhoInThread)
    def who_in_thread(req: WhoInThread, ctx: CallContext) -> Seen:
        return seen(ctx)

    @server.method(WhoStream)
    async def who_stream(req: WhoStream, ctx: CallContext) -> AsyncIterator[Seen]:
        for _ in range(req.count):
            yield seen(ctx)

    @server.method(Remember)
    async def remember(req: Remember, ctx: CallContext) -> None:
        record.contexts.append(seen(ctx))

    @server.method(Twice)
    async def twice(req: Twice) -> int:
        return 2 * req.x

    @server.method(Thrice)
    def thrice(req: Thrice) -> int:
        return 3 * req.x

    @server.method(Forbidden)
    async def forbidden(req: Forbidden) -> int:
        raise AssertionError("the hook refuses this call")

    return server


def sock_path(sock_dir: str) -> str:
    return os.path.join(sock_dir, "fast.sock")


@asynccontextmanager
async def served(kind: str, server: Server, path: str) -> AsyncIterator[str]:
    """*server* on *path*: in this loop for the async client, in a thread for the sync one."""
    if kind == "sync":
        with serving_in_thread(server, path):
            yield path
    else:
        async with serving(server, path):
            yield path


@asynccontextmanager
async def connected(kind: str, path: str) -> AsyncIterator[Driver]:
    if kind == "sync":
        with Client(path, timeout=5) as client:
            yield Driver(kind, client)
    else:
        async with AsyncClient(path, timeout=5) as client:
            yield Driver(kind, client)


@asynccontextmanager
async def rpc(kind: str, sock_dir: str, record: Record | None = None, **kwargs: Any) -> AsyncIterator[Driver]:
    server = fast_server(record if record is not None else Record(), **kwargs)
    async with served(kind, server, sock_path(sock_dir)) as path, connected(kind, path) as client:
        yield client


# raw peers: u32 body length | u16 fd count | JSON


def raw_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def raw_request(sock: socket.socket, call_id: int | None, method: str, params: Any) -> None:
    envelope: dict[str, Any] = {"method": method, "params": params}
    if call_id is not None:
        envelope["id"] = call_id
    body = json.dumps(envelope).encode()
    sock.sendall(struct.pack(">IH", len(body), 0) + body)


def raw_reply(sock: socket.socket) -> tuple[dict[str, Any], int, list[int]]:
    """The next frame: its envelope, the fd count its header declares, and
    the descriptors that arrived with it (the caller closes them)."""
    data = b""
    fds: list[int] = []
    while len(data) < 6 or len(data) < 6 + struct.unpack(">IH", data[:6])[0]:
        chunk, ancdata, flags, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(4 * 16))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(array.array("i", payload[:usable]))
        assert not flags & socket.MSG_CTRUNC
        assert chunk, "the server closed the connection"
        data += chunk
    size, nfds = struct.unpack(">IH", data[:6])
    assert len(data) == 6 + size, "one reply expected"
    return json.loads(data[6:]), nfds, fds


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def threaded_server(sock_dir: str, backend: str) -> Iterator[str]:
    """The test server in a thread on *backend*, for raw blocking peers."""
    with serving_in_thread(fast_server(Record()), sock_path(sock_dir), backend) as path:
        yield path


# -- 1. schema_has_fds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "annotation",
    [
        FD,
        FileDescriptor,
        Carrier,
        Nested,
        list[Carrier],
        Optional[Carrier],  # noqa: UP045 - the spelling is the point
        Union[int, Carrier],  # noqa: UP007
        Carrier | None,
        dict[str, Carrier],
        dict[str, list[Nested]],
        tuple[int, FD],
        Tree,
        list[Tree],
    ],
    ids=[
        "FD",
        "FileDescriptor",
        "model",
        "sub-model",
        "list-of-models",
        "Optional",
        "Union",
        "pipe-union",
        "dict-values",
        "deep",
        "tuple",
        "recursive",
        "list-of-recursive",
    ],
)
def test_schema_has_fds_finds_an_fd_anywhere(annotation: Any) -> None:
    assert schema_has_fds(TypeAdapter(annotation).core_schema) is True


@pytest.mark.parametrize(
    "annotation",
    [int, str, None, Plain, list[Plain], dict[str, Plain], Optional[Plain], PlainTree, User],  # noqa: UP045
    ids=["int", "str", "None", "model", "list", "dict", "Optional", "recursive", "User"],
)
def test_schema_has_fds_is_false_without_fds(annotation: Any) -> None:
    assert schema_has_fds(TypeAdapter(annotation).core_schema) is False


@pytest.mark.parametrize(
    "annotation", [Loose, Any, list[Any], dict[str, Any]], ids=["Any-field", "Any", "list", "dict"]
)
def test_values_of_unknown_type_count_as_holding_fds(annotation: Any) -> None:
    # what an Any holds is only known at run time: the safe answer
    assert schema_has_fds(TypeAdapter(annotation).core_schema) is True


def test_schema_has_fds_for_a_model_not_built_yet_is_true() -> None:
    class Unfinished(BaseModel):
        later: NotYetDefined  # type: ignore[name-defined]  # noqa: F821

    assert Unfinished.__pydantic_complete__ is False
    assert not isinstance(Unfinished.__pydantic_core_schema__, dict)
    assert schema_has_fds(Unfinished.__pydantic_core_schema__) is True
    assert schema_has_fds(None) is True
    assert schema_has_fds("a string") is True
    assert schema_has_fds({"type": "int"}) is False, "a dict is inspected"


# -- 2. MethodSpec.params_have_fds / result_has_fds ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "result"),
    [
        (Deliver, True, False),
        (DeliverAny, True, False),  # an Any field may hold a descriptor
        (HandOverAny, False, True),  # so may an Any result
        (HandOver, False, True),
        (HandOverStream, False, True),
        (TakeFd, True, False),
        (TakeFdAsInt, False, False),
        (GiveFd, False, True),
        (GiveFdAsInt, False, False),
        (AUser, False, False),
        (Who, False, False),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_method_spec_knows_where_fds_are(method: type[BaseModel], params: bool, result: bool) -> None:
    spec = method.__rpc_spec__  # type: ignore[attr-defined]
    assert (spec.params_have_fds, spec.result_has_fds) == (params, result)


def test_method_spec_with_fds_in_nested_and_recursive_types() -> None:
    class Grow(Method[list[Tree]]):
        tree: Tree

    class Plant(StreamMethod[dict[str, Optional[Nested]]]):  # noqa: UP045
        seeds: list[PlainTree]

    assert (Grow.__rpc_spec__.params_have_fds, Grow.__rpc_spec__.result_has_fds) == (True, True)
    assert (Plant.__rpc_spec__.params_have_fds, Plant.__rpc_spec__.result_has_fds) == (False, True)


def test_params_have_fds_is_asked_again_once_forward_references_resolve() -> None:
    class Early(Method[int]):
        thing: Later  # type: ignore[name-defined]

    class EarlyFd(Method[int]):
        thing: LaterFd  # type: ignore[name-defined]

    assert not Early.__pydantic_complete__
    assert Early.__rpc_spec__.params_have_fds is True, "unknown yet: the safe answer"
    assert EarlyFd.__rpc_spec__.params_have_fds is True

    class Later(BaseModel):
        n: int

    class LaterFd(BaseModel):
        fd: FD

    assert Early.model_rebuild() is True
    assert EarlyFd.model_rebuild() is True
    assert Early.__rpc_spec__.params_have_fds is False, "not stuck on the early answer"
    assert EarlyFd.__rpc_spec__.params_have_fds is True


# -- 3. serialize() and its tripwire ------------------------------------------------------------


def test_serialize_without_descriptors_makes_no_context() -> None:
    data, context = serialize(TypeAdapter(Plain).serializer, Plain(a=1, tags=["x"]), has_fds=False)
    assert (json.loads(data), context) == ({"a": 1, "tags": ["x"]}, None)
    data, context = serialize(
        Loose.__pydantic_serializer__, Loose(value=[1, {"k": Plain(a=2)}]), has_fds=False
    )
    assert (json.loads(data), context) == ({"value": [1, {"k": {"a": 2, "tags": []}}]}, None)
    assert serialize(TypeAdapter(int).serializer, 5, has_fds=False, warnings=False) == (b"5", None)


def test_serialize_with_descriptors_collects_them() -> None:
    r, w = os.pipe()
    try:
        handle = FileDescriptor.borrow(r)
        data, context = serialize(
            TypeAdapter(Nested).serializer,
            Nested(name="n", inner=Carrier(label="c", fd=handle)),
            has_fds=True,
        )
        assert json.loads(data) == {"name": "n", "inner": {"label": "c", "fd": 0}}
        assert context is not None
        assert context.outgoing == [handle]
        # a schema with FD fields, a value without a descriptor: nothing to send
        data, context = serialize(TypeAdapter(Tree).serializer, Tree(name="t"), has_fds=True)
        assert json.loads(data) == {"name": "t", "children": [], "fd": None}
        assert context is None or context.outgoing == []
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("warnings", [True, False, "error"])
@pytest.mark.parametrize("where", ["direct", "in-list", "in-dict", "deep"])
def test_serialize_tripwire_catches_a_descriptor_behind_any(warnings: Any, where: str) -> None:
    r, w = os.pipe()
    os.dup2(r, 100)  # a number that cannot pass for index 0 or 1
    os.close(r)
    r = 100
    try:
        first = Carrier(label="a", fd=FileDescriptor.borrow(r))
        second = Carrier(label="b", fd=FileDescriptor.borrow(w))
        held: Any = {
            "direct": first,
            "in-list": [1, first, second],
            "in-dict": {"x": first, "y": [second]},
            "deep": Loose(value=Nested(name="n", inner=first)),
        }[where]
        data, context = serialize(
            Loose.__pydantic_serializer__, Loose(value=held), has_fds=False, warnings=warnings
        )
        assert context is not None, "the descriptor was noticed"
        expected_fds = [r] if where in ("direct", "deep") else [r, w]
        assert [handle.fileno() for handle in context.outgoing] == expected_fds
        sent = json.loads(data)["value"]
        fd_fields = {
            "direct": lambda: [sent["fd"]],
            "in-list": lambda: [sent[1]["fd"], sent[2]["fd"]],
            "in-dict": lambda: [sent["x"]["fd"], sent["y"][0]["fd"]],
            "deep": lambda: [sent["value"]["inner"]["fd"]],
        }[where]()
        assert fd_fields == list(range(len(expected_fds))), "indexes into the frame's fds, not raw numbers"
        assert str(r) not in data.decode()
    finally:
        os.close(r)
        os.close(w)


def test_serialize_tripwire_closes_what_was_transferred_when_encoding_fails() -> None:
    fd = memfd_with(b"given away")
    carrier = Carrier(label="t", fd=FileDescriptor.transfer(fd))
    with pytest.raises(ValueError, match="Unable to serialize unknown type"):
        serialize(Loose.__pydantic_serializer__, Loose(value=[carrier, object()]), has_fds=False)
    assert is_closed(fd), "ownership passed to the encoding: closed even though nothing is sent"


def test_a_generator_behind_any_is_encoded_once_with_its_descriptor() -> None:
    fd = memfd_with(b"in a generator")

    def items() -> Iterator[Any]:
        yield "before"
        yield Carrier(label="g", fd=FileDescriptor.transfer(fd))
        yield "after"

    try:
        # the tripwire cannot replay a generator: an Any field counts as holding fds
        has_fds = schema_has_fds(Loose.__pydantic_core_schema__)
        data, context = serialize(Loose.__pydantic_serializer__, Loose(value=items()), has_fds=has_fds)
        assert json.loads(data) == {"value": ["before", {"label": "g", "fd": 0}, "after"]}
        assert context is not None
        assert len(context.outgoing) == 1
        context.sent()
        assert is_closed(fd), "transferred: closed once sent"
    finally:
        if not is_closed(fd):
            os.close(fd)


def test_serialize_never_sends_a_bare_descriptor_number() -> None:
    """A FileDescriptor directly in an ``Any`` field (not inside a model with
    an FD field) is not encodable at all: an error, never its raw number."""
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="Unable to serialize unknown type"):
            serialize(Loose.__pydantic_serializer__, Loose(value=FileDescriptor.borrow(r)), has_fds=False)
    finally:
        os.close(r)
        os.close(w)


def test_a_wrap_serializer_that_catches_errors_still_sends_the_descriptor() -> None:
    class Guarded(BaseModel):
        value: Any

        @field_serializer("value", mode="wrap")
        def _value(self, value: Any, handler: SerializerFunctionWrapHandler) -> Any:
            try:
                return handler(value)
            except ValueError:
                return "unencodable"

    r, w = os.pipe()
    try:
        guarded = Guarded(value=Carrier(label="g", fd=FileDescriptor.borrow(r)))
        # with a real context from the start (as before the fast path) the descriptor is sent
        context = FdContext()
        data = Guarded.__pydantic_serializer__.to_json(guarded, context=context.pydantic_context)
        assert (json.loads(data), len(context.outgoing)) == ({"value": {"label": "g", "fd": 0}}, 1)
        # the fast path must agree
        # a wrap serializer could swallow the tripwire: an Any field counts as holding fds
        has_fds = schema_has_fds(Guarded.__pydantic_core_schema__)
        data, fast_context = serialize(Guarded.__pydantic_serializer__, guarded, has_fds=has_fds)
        assert json.loads(data) == {"value": {"label": "g", "fd": 0}}
        assert fast_context is not None
        assert len(fast_context.outgoing) == 1
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.anyio
async def test_params_typed_any_holding_a_descriptor_send_it(client_kind: str, sock_dir: str) -> None:
    """The client's field is ``Any`` (no FD in its schema): the tripwire makes
    the frame carry the descriptor, which the server (whose field is typed)
    reads from."""
    before = open_fds()
    async with rpc(client_kind, sock_dir) as client:
        for i in range(3):
            r, w = pipe_with(f"through the pipe {i}".encode())
            try:
                carrier = Carrier(label=f"call{i}", fd=FileDescriptor.borrow(r))
                assert DeliverAny.__rpc_spec__.params_have_fds is True  # an Any field may hold one
                assert await client.call(DeliverAny(carrier=carrier)) == f"call{i}:through the pipe {i}"
                assert not is_closed(r), "a borrowed descriptor stays open"
            finally:
                os.close(r)
                os.close(w)
        # and a transferred one is closed once sent
        r, w = pipe_with(b"transferred")
        try:
            carrier = Carrier(label="t", fd=FileDescriptor.transfer(r))
            assert await client.call(DeliverAny(carrier=carrier)) == "t:transferred"
            # (not is_closed(r): with the server in a thread of this process, the
            # number r may already name the server's received copy of the pipe)
            assert carrier.fd.closed
        finally:
            os.close(w)
    assert_no_new_fds(before)


@pytest.mark.anyio
async def test_notification_typed_any_holding_a_descriptor_sends_it(client_kind: str, sock_dir: str) -> None:
    record = Record()
    before = open_fds()
    async with rpc(client_kind, sock_dir, record) as client:
        r, w = pipe_with(b"noted")
        try:
            await client.notify(DeliverNoteAny(carrier=Carrier(label="n", fd=FileDescriptor.borrow(r))))
            await wait_for(lambda: bool(record.delivered))
        finally:
            os.close(r)
            os.close(w)
        assert await client.call(Twice(x=1)) == 2
    assert record.delivered == ["n:noted"]
    assert_no_new_fds(before)


@pytest.mark.anyio
async def test_result_typed_any_holding_a_descriptor_sends_it(client_kind: str, sock_dir: str) -> None:
    """The server's result type is ``Any``: the tripwire makes the reply carry
    the descriptor (the client's result type is the typed model)."""
    assert HandOverAny.__rpc_spec__.result_has_fds is True  # an Any result may hold one
    before = open_fds()
    async with rpc(client_kind, sock_dir) as client:
        for label in ("first", "second"):
            carrier = await client.call(HandOver(label=label))
            assert isinstance(carrier, Carrier)
            assert carrier.label == label
            with carrier.fd as fd:
                assert fd.owned
                assert target(fd.fileno()).startswith("/memfd:fast-paths")
                assert os.pread(fd.fileno(), 100, 0) == f"memfd for {label}".encode()
        items = await client.stream(HandOverStream(count=3))
        assert [item.label for item in items] == ["0", "1", "2"]
        for i, item in enumerate(items):
            with item.fd as fd:
                assert os.pread(fd.fileno(), 100, 0) == f"item {i}".encode()
        assert BoxOverLoose.__rpc_spec__.trusted_type is Loose
        assert BoxOverLoose.__rpc_spec__.result_has_fds is True  # its Any field may hold one
        boxed = await client.call(BoxOver(label="trusted"))
        with boxed.value.fd as fd:
            assert os.pread(fd.fileno(), 100, 0) == b"boxed trusted"
    assert_no_new_fds(before)


def test_result_typed_any_reply_frame_carries_one_fd(threaded_server: str) -> None:
    """On the wire: the reply declares one descriptor, one arrives with it,
    and the field holds its index."""
    before = open_fds()
    with raw_connect(threaded_server) as sock:
        raw_request(sock, 7, "HandOver", {"label": "raw"})
        envelope, nfds, fds = raw_reply(sock)
        try:
            assert (envelope, nfds, len(fds)) == ({"id": 7, "result": {"label": "raw", "fd": 0}}, 1, 1)
            assert os.pread(fds[0], 100, 0) == b"memfd for raw"
        finally:
            for fd in fds:
                os.close(fd)
        raw_request(sock, 8, "Twice", {"x": 4})
        assert raw_reply(sock) == ({"id": 8, "result": 8}, 0, [])
    assert_no_new_fds(before)


# -- 4. frames without descriptors: the shared empty FdContext ----------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("index", [0, 3])
async def test_server_refuses_an_fd_field_without_a_descriptor(
    client_kind: str, sock_dir: str, index: int
) -> None:
    before = open_fds()
    async with rpc(client_kind, sock_dir) as client:
        assert await client.call(Twice(x=1)) == 2
        during = open_fds()
        for _ in range(3):
            with pytest.raises(InvalidParamsError) as info:
                await client.call(TakeFdAsInt(data=index))
            assert info.value.message == (
                f"invalid params for TakeFd: data: fd index {index} out of range: "
                f"the frame carries 0 descriptors (got {index})"
            )
            [error] = info.value.data
            assert error["loc"] == ["data"]
            assert f"fd index {index} out of range: the frame carries 0 descriptors" in error["msg"]
        assert await client.call(Twice(x=2)) == 4, "the connection goes on"
        # a real descriptor still gets through
        fd = memfd_with(b"")
        try:
            assert await client.call(TakeFd(data=fd)) == target(fd)
        finally:
            os.close(fd)
        await assert_no_new_fds_soon(during)
    assert_no_new_fds(before)
    empty = FdContext.receiving([])
    assert empty is FdContext.receiving([]), "one shared context"
    assert (empty.holds_any(), empty.outgoing) == (False, [])


@pytest.mark.anyio
async def test_client_refuses_an_fd_field_without_a_descriptor(client_kind: str, sock_dir: str) -> None:
    before = open_fds()
    async with rpc(client_kind, sock_dir) as client:
        assert await client.call(Twice(x=1)) == 2
        during = open_fds()
        for index in (0, 1):
            with pytest.raises(InvalidResultError, match="server sent an invalid result for GiveFd") as info:
                await client.call(GiveFd(index=index))
            assert f"fd index {index} out of range: the frame carries 0 descriptors" in str(info.value)
            assert [error["loc"] for error in info.value.error_info] == [("fd",)]
        with pytest.raises(InvalidResultError, match="server sent an invalid item for GiveFds"):
            await client.stream(GiveFds(index=0))
        assert await client.call(Twice(x=3)) == 6, "the connection goes on"
        carrier = await client.call(HandOver(label="still works"))
        with carrier.fd:
            assert os.pread(carrier.fd.fileno(), 100, 0) == b"memfd for still works"
        await assert_no_new_fds_soon(during)
    assert_no_new_fds(before)
    empty = FdContext.receiving([])
    assert (empty.holds_any(), empty.outgoing) == (False, [])


def test_receiving_with_descriptors_makes_a_fresh_context() -> None:
    fd = memfd_with(b"")
    context = FdContext.receiving([fd])
    assert context is not FdContext.receiving([])
    handle = context.take(0)
    assert handle.fileno() == fd
    context.abort()
    assert is_closed(fd)
    with pytest.raises(ValueError, match="out of range: the frame carries 0 descriptors"):
        FdContext.receiving([]).take(0)


# -- 5. results of exactly the declared type skip pydantic's warnings ---------------------------


@pytest.mark.anyio
async def test_results_of_exactly_the_declared_type(client_kind: str, sock_dir: str) -> None:
    async with rpc(client_kind, sock_dir) as client:
        assert AnInt.__rpc_spec__.trusted_type is int
        assert AUser.__rpc_spec__.trusted_type is User
        assert ANone.__rpc_spec__.trusted_type is type(None)
        assert AList.__rpc_spec__.trusted_type is None
        assert await client.call(AnInt(kind="int")) == 5
        assert await client.call(AStr(kind="str")) == "text"
        assert await client.call(ANone(kind="none")) is None
        assert await client.call(AUser(kind="plain")) == User(uid=1, name="alice")
        assert await client.call(AList(kind="ok")) == [1, 2]
        # not of the declared type, but it validates (strictly) into it: a dict for a model
        assert await client.call(AUser(kind="dict")) == User(uid=3, name="from a dict")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "returned"),
    [
        (AnInt(kind="str"), "str"),
        (AnInt(kind="float"), "float"),
        (AStr(kind="int"), "int"),
        (ANone(kind="int"), "int"),
        (AList(kind="bad"), "str"),
    ],
    ids=["int-got-str", "int-got-float", "str-got-int", "None-got-int", "list-got-str"],
)
async def test_results_of_another_type_are_still_checked(
    client_kind: str, sock_dir: str, method: Method[Any], returned: str
) -> None:
    name = type(method).__rpc_spec__.name  # type: ignore[attr-defined]
    async with rpc(client_kind, sock_dir) as client:
        with pytest.raises(InternalError) as info:
            await client.call(method)
        assert info.value.message.startswith(f"handler of {name} returned an invalid result: ")
        assert returned in info.value.message
        assert await client.call(Twice(x=5)) == 10


@pytest.mark.anyio
async def test_a_subclass_of_the_declared_model_is_checked_and_encoded_as_declared(
    client_kind: str, sock_dir: str
) -> None:
    async with rpc(client_kind, sock_dir) as client:
        user = await client.call(AUser(kind="subclass"))
    assert type(user) is User
    assert user.model_dump() == {"uid": 2, "name": "root"}


@pytest.mark.anyio
async def test_a_model_assigned_a_wrong_field_type_reaches_the_client(
    client_kind: str, sock_dir: str
) -> None:
    """A result of exactly the declared model class is encoded without
    pydantic's type check (a model was checked when it was built). A model
    without ``validate_assignment`` whose field was later assigned a value of
    the wrong type therefore goes out as it is: the server does NOT answer
    InternalError (as it did before the fast path), the client's validation
    of the result raises InvalidResultError instead. And a wrong value the
    client's (lax) validation can coerce, such as the string "7" for an int,
    is silently accepted: the server's check that used to catch it is gone."""
    async with rpc(client_kind, sock_dir) as client:
        with pytest.raises(InvalidResultError, match="server sent an invalid result for AUser") as info:
            await client.call(AUser(kind="assigned-wrong"))
        assert [(error["loc"], error["input"]) for error in info.value.error_info] == [
            (("uid",), "not a number")
        ]
        assert await client.call(AUser(kind="assigned-coercible")) == User(uid=7, name="alice")
        assert await client.call(Twice(x=6)) == 12


@pytest.mark.anyio
async def test_none_for_a_plain_type_slips_past_the_server_check(client_kind: str, sock_dir: str) -> None:
    """pydantic's serializers let None through any type without a warning,
    even with warnings="error" (the checked path): a handler of Method[int]
    returning None is caught by the client (InvalidResultError), not the
    server. Not new with the fast path; pinned so a change is noticed."""
    async with rpc(client_kind, sock_dir) as client:
        with pytest.raises(InvalidResultError, match="server sent an invalid result for AnInt") as info:
            await client.call(AnInt(kind="none"))
        assert [error["input"] for error in info.value.error_info] == [None]
        assert await client.call(Twice(x=7)) == 14


# -- 6. CallContext, built lazily ---------------------------------------------------------------


def me(method: str, call_id: Any, connection_id: int) -> Seen:
    return Seen(
        method=method,
        call_id=call_id,
        connection_id=connection_id,
        pid=os.getpid(),
        uid=os.getuid(),
        gid=os.getgid(),
    )


@pytest.mark.anyio
async def test_handlers_that_take_ctx_see_the_call(client_kind: str, sock_dir: str) -> None:
    record = Record()
    server = fast_server(record)
    async with served(client_kind, server, sock_path(sock_dir)) as path:
        async with connected(client_kind, path) as client:
            first = await client.call(Who())
            connection = first.connection_id
            assert isinstance(first.call_id, int)
            assert first == me("ctx.Who", first.call_id, connection)
            second = await client.call(WhoInThread())
            assert second == me("ctx.WhoInThread", second.call_id, connection)
            streamed = await client.stream(WhoStream(count=2))
            assert len(streamed) == 2
            assert streamed[0] == streamed[1] == me("ctx.WhoStream", streamed[0].call_id, connection)
            assert isinstance(second.call_id, int)
            assert isinstance(streamed[0].call_id, int)
            assert len({first.call_id, second.call_id, streamed[0].call_id}) == 3
            await client.notify(Remember(tag="n"))
            await wait_for(lambda: bool(record.contexts))
            assert record.contexts == [me("ctx.Remember", None, connection)]
            assert await client.call(Twice(x=21)) == 42, "a handler without ctx"
            assert await client.call(Thrice(x=3)) == 9, "a thread handler without ctx"
        async with connected(client_kind, path) as other:
            elsewhere = await other.call(Who())
        assert elsewhere == me("ctx.Who", elsewhere.call_id, elsewhere.connection_id)
        assert elsewhere.connection_id != connection


def test_ctx_call_id_is_the_request_id(threaded_server: str) -> None:
    with raw_connect(threaded_server) as sock:
        raw_request(sock, 41, "ctx.Who", {})
        envelope, nfds, fds = raw_reply(sock)
        assert (nfds, fds) == (0, [])
        assert envelope["id"] == 41
        assert Seen.model_validate(envelope["result"]) == me(
            "ctx.Who", 41, envelope["result"]["connection_id"]
        )
        raw_request(sock, 1234, "ctx.WhoInThread", {})
        envelope, _, _ = raw_reply(sock)
        assert (envelope["id"], envelope["result"]["call_id"]) == (1234, 1234)


@pytest.mark.anyio
@pytest.mark.parametrize("hook_kind", ["sync", "async"])
async def test_authorize_hook_sees_the_call(client_kind: str, sock_dir: str, hook_kind: str) -> None:
    record = Record()

    def decide(ctx: CallContext, request: Any) -> bool:
        record.hook.append((seen(ctx), request))
        return not isinstance(request, Forbidden)

    async def decide_async(ctx: CallContext, request: Any) -> bool:
        await anyio.sleep(0)
        return decide(ctx, request)

    hook = decide if hook_kind == "sync" else decide_async
    server = fast_server(record, authorize=hook)
    async with (
        served(client_kind, server, sock_path(sock_dir)) as path,
        connected(client_kind, path) as client,
    ):
        handled = await client.call(Who())
        with pytest.raises(PermissionDeniedError, match="Forbidden is not allowed"):
            await client.call(Forbidden())
        assert await client.call(Twice(x=4)) == 8
        await client.notify(Remember(tag="hooked"))
        await wait_for(lambda: bool(record.contexts))
    connection = handled.connection_id
    assert [request for _, request in record.hook] == [Who(), Forbidden(), Twice(x=4), Remember(tag="hooked")]
    contexts = [context for context, _ in record.hook]
    assert contexts[0] == handled, "the hook and the handler see the same call"
    assert contexts[1] == me("Forbidden", contexts[1].call_id, connection)
    assert contexts[2] == me("Twice", contexts[2].call_id, connection)
    assert contexts[3] == me("ctx.Remember", None, connection)
    assert record.contexts == [contexts[3]]
    call_ids = [context.call_id for context in contexts[:3]]
    assert all(isinstance(call_id, int) for call_id in call_ids)
    assert len(set(call_ids)) == 3
