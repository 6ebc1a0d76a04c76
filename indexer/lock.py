"""The writer lock: one writer per index directory (fcntl.flock on `write.lock`);
readers never take it."""

from __future__ import annotations

import fcntl
import math
import os
import time
from pathlib import Path

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
    """Exclusive lock on an index directory; waits up to `timeout` seconds, then raises LockTimeout."""

    def __init__(self, directory: Path, *, timeout: float | None = None):
        self.path = Path(directory) / LOCK_NAME
        self.timeout = default_timeout() if timeout is None else timeout
        self._fd: int | None = None

    def acquire(self) -> "WriteLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
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
                        f"{self.timeout:g}s; wait for it to finish, or raise LATENT_LOCK_TIMEOUT"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def try_acquire(self) -> bool:
        """Take the lock only if it is free right now."""
        saved, self.timeout = self.timeout, 0
        try:
            self.acquire()
            return True
        except LockTimeout:
            return False
        finally:
            self.timeout = saved

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "WriteLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
