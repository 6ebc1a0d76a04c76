"""Named failpoints: the moments where a crash or an I/O error is most dangerous.

The crash tests run the real `latent` command and make it die (or fail) exactly at one
of these points, as storage engines do with failpoints (FoundationDB's BUGGIFY, TiKV's
fail-rs). Nothing happens unless LATENT_FAILPOINTS is set, e.g.

    LATENT_FAILPOINTS="vectors-synced:2=kill"     SIGKILL at the 2nd time the point is hit
    LATENT_FAILPOINTS="commit:3=enospc"           raise OSError(ENOSPC) at the 3rd commit

Points:
    commit            a store transaction (a batch, a deletion) has just committed
    vectors-written   the temporary vectors file is written, not yet fsynced
    vectors-synced    the temporary file is fsynced, not yet renamed into place
    vectors-renamed   a new vector file (base or segment) is in place, its directory not yet fsynced
    merge-start       segments are about to merge into a new base; nothing of it is written yet
    merge-renamed     a new base (merged, rebuilt) is in place and durable; the manifest still lists the old segments
    merge-recorded    the manifest lists the merged base only; the old segment files are not yet deleted
"""

from __future__ import annotations

import errno
import os
import signal

POINTS = ("commit", "vectors-written", "vectors-synced", "vectors-renamed", "merge-start", "merge-renamed",
          "merge-recorded")
ACTIONS = ("kill", "enospc")


def _parse(spec: str) -> dict[str, tuple[int, str]]:
    armed: dict[str, tuple[int, str]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        where, _, action = part.partition("=")
        name, _, count = where.partition(":")
        if name not in POINTS or action not in ACTIONS or not (count or "1").isdigit():
            raise ValueError(f"bad LATENT_FAILPOINTS entry {part!r}: use NAME[:COUNT]=ACTION with NAME one of "
                             f"{', '.join(POINTS)} and ACTION one of {', '.join(ACTIONS)}")
        armed[name] = (int(count or 1), action)
    return armed


_ARMED = _parse(os.environ.get("LATENT_FAILPOINTS", ""))
_hits: dict[str, int] = {}


def hit(name: str) -> None:
    """Pass the failpoint `name`: a no-op unless LATENT_FAILPOINTS arms it for this hit."""
    if not _ARMED or name not in _ARMED:
        return
    _hits[name] = _hits.get(name, 0) + 1
    count, action = _ARMED[name]
    if _hits[name] != count:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, f"No space left on device (failpoint {name}:{count})")
