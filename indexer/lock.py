"""The locks: one writer per index directory (fcntl.flock on `write.lock`, and one thread
at a time within a process), which readers never take; and the readers-writer lock that lets
the threads sharing one index object search together but never while a write changes it."""

from __future__ import annotations

import fcntl
import math
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import InputError, LockTimeout

LOCK_NAME = "write.lock"


def env_seconds(name: str, default: float) -> float:
    """A duration from the environment variable `name`: a finite number of seconds >= 0."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{name} must be a number of seconds >= 0, not {raw!r}")
    return value


def default_timeout() -> float:
    """$LATENT_LOCK_TIMEOUT seconds (default 30)."""
    return env_seconds("LATENT_LOCK_TIMEOUT", 30.0)


class WriteLock:
    """Exclusive lock on an index directory; waits up to `timeout` seconds, then raises LockTimeout.

    flock excludes other processes only: the threads of this process sharing the object wait
    on an in-process lock first, so one thread holds it at a time (`held`: by this thread)."""

    def __init__(self, directory: Path, *, timeout: float | None = None):
        self.path = Path(directory) / LOCK_NAME
        self.timeout = default_timeout() if timeout is None else timeout
        self._fd: int | None = None
        self._threads = threading.Lock()
        self._owner: int | None = None  # the thread holding it

    def acquire(self, timeout: float | None = None) -> "WriteLock":
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(True, timeout):
            raise LockTimeout(f"{self.path.parent} is being written by another thread of this process for more "
                              f"than {timeout:g}s; wait for it to finish, or raise LATENT_LOCK_TIMEOUT")
        try:
            self._fd = self._lock_file(deadline, timeout)
        except BaseException:
            self._threads.release()
            raise
        self._owner = threading.get_ident()
        return self

    def _lock_file(self, deadline: float, timeout: float) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    raise LockTimeout(
                        f"{self.path.parent} is locked by a writer (pid {holder}) for more than "
                        f"{timeout:g}s; wait for it to finish, or raise LATENT_LOCK_TIMEOUT"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def try_acquire(self) -> bool:
        """Take the lock only if it is free right now."""
        try:
            self.acquire(0)
            return True
        except LockTimeout:
            return False

    def release(self) -> None:
        """Release the lock if this thread holds it."""
        if self.held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = self._owner = None
            self._threads.release()

    @property
    def held(self) -> bool:
        """Whether this thread holds the lock."""
        return self._owner == threading.get_ident()

    def __enter__(self) -> "WriteLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class ReadWriteLock:
    """Many threads share it, or one holds it exclusively; a waiting exclusive holder goes
    before new sharers, so a stream of readers cannot starve a writer.

    Re-entrant: a thread sharing it may share it again (nested reads), and the exclusive
    holder may share or hold it again. A thread sharing it cannot hold it exclusively (it
    would wait for itself): `exclusive` raises `upgrade_error()` instead."""

    def __init__(self, upgrade_error: Callable[[], Exception]):
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._sharers = 0
        self._waiting = 0  # threads waiting to hold it exclusively
        self._owner: int | None = None
        self._mine = threading.local()  # .depth: this thread's nesting of shares; .counted: in _sharers
        self._upgrade_error = upgrade_error

    def sharing(self) -> bool:
        """Whether this thread shares the lock."""
        return getattr(self._mine, "depth", 0) > 0

    def acquire_shared(self) -> None:
        mine = self._mine
        depth = getattr(mine, "depth", 0)
        if not depth:
            owner = self._owner
            mine.counted = owner is None or owner != threading.get_ident()
            if mine.counted:
                with self._mutex:  # (the condition's lock: entered directly, it costs less)
                    while self._owner is not None or self._waiting:
                        self._cond.wait()
                    self._sharers += 1
        mine.depth = depth + 1

    def release_shared(self) -> None:
        mine = self._mine
        mine.depth -= 1
        if not mine.depth and mine.counted:
            with self._mutex:
                self._sharers -= 1
                if not self._sharers and self._waiting:
                    self._cond.notify_all()

    @contextmanager
    def shared(self) -> Iterator[None]:
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:
            yield
            return
        if self.sharing():
            raise self._upgrade_error()
        with self._cond:
            self._waiting += 1
            try:
                while self._owner is not None or self._sharers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._owner = me
        try:
            yield
        finally:
            with self._cond:
                self._owner = None
                self._cond.notify_all()
