"""asyncvarlink's side of tests/test_varlink_client.py. No ``from __future__
import annotations`` here: asyncvarlink reads the annotations as types."""

import os
import typing

import asyncvarlink


def fd_peer() -> asyncvarlink.VarlinkInterface:
    """An asyncvarlink interface, org.example.fds, that takes and gives descriptors."""

    class FdPeer(asyncvarlink.VarlinkInterface, name="org.example.fds"):
        @asyncvarlink.varlinkmethod(return_parameter="result")
        def ReadFrom(self, *, fd: asyncvarlink.FileDescriptor) -> str:
            return os.read(fd.fileno(), 100).decode()

        @asyncvarlink.varlinkmethod(return_parameter="result")
        def Pipe(self) -> asyncvarlink.FileDescriptor:
            read, write = os.pipe()
            os.write(write, b"from asyncvarlink")
            os.close(write)
            return asyncvarlink.FileDescriptor(read, should_close=True)

        @asyncvarlink.varlinkmethod(return_parameter="result")
        def Add(self, *, a: int, b: int) -> int:
            return a + b

        @asyncvarlink.varlinkmethod(return_parameter="data")
        def Echo(self, *, data: str) -> str:
            return data

        @asyncvarlink.varlinkmethod(return_parameter="item")
        def Count(self, *, n: int) -> typing.Iterator[int]:
            yield from range(n)

    return FdPeer()


class Piped(typing.TypedDict):
    fd: asyncvarlink.FileDescriptor
    note: str


def calc_interface() -> type[asyncvarlink.VarlinkInterface]:
    """The client side of tests/test_varlink_server.py's daemon, for asyncvarlink's proxies."""

    class Calc(asyncvarlink.VarlinkInterface, name="org.example.calc"):
        @asyncvarlink.varlinkmethod(return_parameter="result")
        def Add(self, *, a: int, b: int) -> int:
            raise NotImplementedError

        @asyncvarlink.varlinkmethod(return_parameter="result")
        def ReadFrom(self, *, fd: asyncvarlink.FileDescriptor) -> str:
            raise NotImplementedError

        @asyncvarlink.varlinkmethod
        def Pipe(self, *, note: str) -> Piped:
            raise NotImplementedError

        @asyncvarlink.varlinkmethod(return_parameter="item")
        def Count(self, *, n: int) -> typing.Iterator[int | None]:
            raise NotImplementedError

    return Calc
