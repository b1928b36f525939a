"""ClientCore: everything the client shells (``unixrpc.client``) ask of the
protocol, and nothing more. No I/O.

Today one :class:`~unixrpc._core.client.ClientConnection` implements it per
connection. The seam is here so that a session layer (reconnect, retry of
idempotent calls, stream resume; written once for sync and async) can
implement the same face over a succession of connections, and the shells
keep waiting, locking and moving bytes without knowing which one they drive.
Only these names may be used by a shell: a test checks it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ...methods import MethodSpec
from .. import wire
from .calls import CallSlot, Message, Timeout

__all__ = ["ClientCore"]


class ClientCore(Protocol):
    """The client protocol as the shells drive it (see ``connection.py`` for
    the rules behind each method)."""

    #: the first cause of the end, or None while usable
    broken: BaseException | None

    def __len__(self) -> int:
        """Calls in flight."""

    # usability and errors
    def check_usable(self) -> None:
        """Raises: the broken error once broken."""

    def broken_error(self) -> Exception:
        """A fresh error for a caller, of the class of the cause of the end."""

    def timed_out(self, slot: CallSlot) -> TimeoutError:
        """The error of a caller whose deadline passed."""

    # what to send
    def request(
        self, spec: MethodSpec, params: bytes, nfds: int = 0, timeout: Timeout = ...
    ) -> tuple[CallSlot, bytes]:
        """Open a call: its slot (with its deadline) and its framed request.

        Raises: the broken error; FrameTooLargeError, LocalProtocolError."""

    def notification(self, spec: MethodSpec, params: bytes, nfds: int = 0) -> bytes:
        """A framed notification. Raises: as :meth:`request`."""

    def ask_item(self, slot: CallSlot) -> None:
        """A stream's caller asks for its next item: its deadline starts."""

    def take(self, slot: CallSlot) -> tuple[Message, bytes | None]:
        """The next message of *slot*, and a credit or cancel to send first."""

    def give_up(self, slot: CallSlot, *, request_sent: bool = True) -> bytes | None:
        """Drop *slot*; the cancel to send, if the server should be told."""

    def cancel_deadline(self) -> float:
        """When writing a cancel must stop."""

    # what happened
    def receive_fds(self, fds: Iterable[int]) -> None:
        """Descriptors that came with a read (owned by the core from now on)."""

    def receive_frames(self, frames: Iterable[wire.RawFrame], buffered: int) -> list[CallSlot]:
        """File whole frames; the slots to wake. Never raises."""

    def read_failed(self, error: BaseException) -> list[CallSlot]:
        """A read failed: broken. The slots to wake."""

    def wants_farewell(self, error: BaseException) -> bool:
        """Whether to read what the server left before :meth:`send_failed`."""

    def send_failed(
        self,
        error: BaseException,
        *,
        cut: bool,
        slot: CallSlot | None = None,
        what: str = "request",
        lost: Message | None = None,
    ) -> tuple[BaseException, list[CallSlot] | None]:
        """A write failed: the error to raise, and the slots to wake if broken."""

    def close(self) -> list[CallSlot]:
        """The client is being closed: the slots to wake."""

    def fail(self, error: BaseException) -> list[CallSlot]:
        """The connection is over because of *error*: the slots to wake."""
