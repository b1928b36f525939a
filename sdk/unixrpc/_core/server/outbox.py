"""What one server connection has to write, in the order it was produced
(:class:`Outbox`): plain frames joined into one chunk, frames with
descriptors kept apart (their descriptors go on the ``sendmsg`` that
carries their first byte). It counts what is not yet written, and releases
descriptors once their frame is out (or given up).

No I/O: the engine takes chunks, writes them, and reports each written.
"""

from __future__ import annotations

from collections.abc import Callable

from .call import Chunk, FdFrame, ServerCall

__all__ = ["FRAME_OVERHEAD", "Outbox"]

#: what a frame waiting in the queue costs beyond its bytes (its ``bytes`` object's header,
#: its list slot, the allocator's rounding), counted in ``unsent`` and ``queued`` until a
#: writer takes it (joined into one chunk): small replies a peer does not read cost about
#: 3x their bytes, which the memory budget must see
FRAME_OVERHEAD = 64


class Outbox:
    """The frames of one connection not yet written (see the module docstring).

    ``unsent`` counts bytes queued and not yet reported written; ``queued``
    those not yet taken by a writer (the frame being written is not among
    them). *release* is called with a stream whose request descriptors
    waited for the last of its items that carried descriptors."""

    __slots__ = ("_has_fds", "_release", "failed", "frames", "queued", "unsent")

    def __init__(self, release: Callable[[ServerCall], None]) -> None:
        self.frames: list[Chunk] = []  # queued, not yet taken by a writer
        self._has_fds = False
        self._release = release
        self.queued = 0
        self.unsent = 0
        #: a write failed: the peer is gone, further output is dropped
        self.failed = False

    def put(self, data: bytes) -> None:
        """Queue a frame without descriptors."""
        self.frames.append(data)
        self.unsent += len(data) + FRAME_OVERHEAD
        self.queued += len(data) + FRAME_OVERHEAD

    def put_fds(self, frame: FdFrame) -> None:
        """Queue a frame with descriptors."""
        self.frames.append(frame)
        self._has_fds = True
        if frame.owner is not None:
            frame.owner.fd_frames += 1
        self.unsent += len(frame.data) + FRAME_OVERHEAD
        self.queued += len(frame.data) + FRAME_OVERHEAD

    def take(self) -> list[Chunk]:
        """What to write now, in order (plain frames joined): write it, then
        report each chunk with :meth:`written`. Empty if nothing waits."""
        out = self.frames
        if not out:
            return out
        self.frames = []
        self.queued = 0
        self.unsent -= FRAME_OVERHEAD * len(out)  # (what is left: the chunks' bytes)
        if not self._has_fds:
            return [out[0] if len(out) == 1 else b"".join(out)]  # type: ignore[arg-type]
        self._has_fds = False
        chunks: list[Chunk] = []
        run: list[bytes] = []
        for chunk in out:
            if type(chunk) is bytes:
                run.append(chunk)
                continue
            if run:
                chunks.append(b"".join(run))
                run = []
            chunks.append(chunk)
        if run:
            chunks.append(b"".join(run))
        return chunks

    def written(self, chunk: Chunk, *, ok: bool = True) -> None:
        """*chunk* was written whole, or could not be (*ok* False: the peer is
        gone; what is queued is dropped, and so is later output). Its
        descriptors are released either way."""
        if type(chunk) is bytes:
            self.unsent -= len(chunk)
        else:
            assert isinstance(chunk, FdFrame)
            self.unsent -= len(chunk.data)
            chunk.fds.sent()
            if chunk.release is not None:
                chunk.release.abort()
            owner = chunk.owner
            if owner is not None:
                owner.fd_frames -= 1
                if not owner.fd_frames and owner.release_pending:
                    owner.release_pending = False
                    self._release(owner)
        if not ok and not self.failed:
            self.failed = True
            self.drop()

    def drop(self) -> None:
        """Discard what is queued (the connection is going away), releasing
        its descriptors."""
        out, self.frames = self.frames, []
        self._has_fds = False
        self.queued = 0
        self.unsent -= FRAME_OVERHEAD * len(out)
        for chunk in out:
            self.written(chunk)
