"""Advisory file locks (POSIX flock) shared by the run folders and the embedded stores.

The operating system drops a lock when its process dies (even by kill -9), so a lock is never stale; the holder's
pid is written into the file only to name it in the error.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


class LockHeld(RuntimeError):
    """Another live process holds the lock."""


@contextlib.contextmanager
def file_lock(path: str | Path, *, blocking: bool = True, what: str = ""):
    """Hold an exclusive lock on `path` for the block; with ``blocking=False`` raise LockHeld at once instead."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; sqlite's own locking only
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            raise LockHeld(f"{what or path} is in use by {owner} (lock {path})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
