"""SharedBuffer: bulk data handed over as a sealed memfd instead of copied
through the socket.

The sender writes the bytes once into an anonymous memory file
(``memfd_create``), seals it against any change (``F_SEAL_WRITE``,
``F_SEAL_SHRINK``, ``F_SEAL_GROW``, ``F_SEAL_SEAL``) and sends the descriptor
in an ``FD`` field. The receiver maps it read-only: no copy through the
socket, and the seals guarantee the sender cannot change the bytes under
the reader. Linux only.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import shutil
from collections.abc import Callable
from typing import Any

from .fds import FileDescriptor

__all__ = ["SharedBuffer"]

_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_CHUNK = 1 << 20


def _sealed_memfd(name: str, fill: Callable[[int], None]) -> FileDescriptor:
    """A new memfd, filled by *fill*, then sealed; closed if anything fails."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        fill(fd)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return FileDescriptor(fd)


class SharedBuffer:
    """Helpers for sealed memfds. Create one with :meth:`from_bytes` or
    :meth:`from_file`, send it as an ``FD`` field, open it on the other side
    with :meth:`map`."""

    @staticmethod
    def from_bytes(data: bytes | bytearray | memoryview, *, name: str = "unixrpc") -> FileDescriptor:
        """A sealed memfd holding *data*; you own the returned descriptor.

        Raises:
            OSError: the kernel refused (no memfd support, out of memory).
        """
        view = memoryview(data).cast("B")

        def fill(fd: int) -> None:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written : written + (64 * _CHUNK)])

        return _sealed_memfd(name, fill)

    @staticmethod
    def from_file(path: str | os.PathLike[str], *, name: str = "unixrpc") -> FileDescriptor:
        """A sealed memfd holding a copy of the file at *path* (copied in the
        kernel where possible); you own the returned descriptor.

        Raises:
            OSError: *path* cannot be read, or the kernel refused.
        """

        def fill(fd: int) -> None:
            with open(path, "rb") as source, os.fdopen(os.dup(fd), "wb", closefd=True) as target:
                size = os.fstat(source.fileno()).st_size
                try:
                    copied = 0
                    while copied < size:
                        step = os.copy_file_range(source.fileno(), target.fileno(), size - copied)
                        if step == 0:
                            break
                        copied += step
                except OSError:
                    source.seek(0)
                    target.seek(0)
                    shutil.copyfileobj(source, target, _CHUNK)

        return _sealed_memfd(name, fill)

    @staticmethod
    def is_sealed(fd: FileDescriptor | int) -> bool:
        """True if the memfd can no longer be written, grown or shrunk."""
        number = fd.fileno() if isinstance(fd, FileDescriptor) else fd
        try:
            seals = fcntl.fcntl(number, fcntl.F_GET_SEALS)
        except OSError:
            return False
        needed = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
        return seals & needed == needed

    @staticmethod
    def map(fd: FileDescriptor | int, *, require_sealed: bool = True) -> memoryview:
        """Map the memfd read-only and return its bytes as a memoryview.

        The mapping stays valid after the descriptor is closed; release the
        view (``view.release()``) to unmap it. An empty buffer gives an empty
        view.

        Raises:
            ValueError: *require_sealed* and the buffer is not sealed (its
                sender could still change it).
            OSError: the descriptor cannot be mapped.
        """
        number = fd.fileno() if isinstance(fd, FileDescriptor) else fd
        if require_sealed and not SharedBuffer.is_sealed(number):
            raise ValueError("the shared buffer is not sealed: its sender could change it while you read")
        size = os.fstat(number).st_size
        if size == 0:
            return memoryview(b"")
        mapping: Any = mmap.mmap(number, size, prot=mmap.PROT_READ)
        return memoryview(mapping)
