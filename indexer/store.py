"""The store: SQLite (WAL) holding items, metadata and vectors, the source of truth.

All SQL of latent lives here. Each write is one transaction that bumps the store's
generation; vectors are float32 blobs in their own table (`vectors`, keyed by the item's id),
so that a filter scanning `items` never reads vector bytes; deletions are logged with their generation
so a vector index at an older generation can catch up. Each thread using a Store has
its own connection, so the transactions of threads sharing it never mix.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import re
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np


def _import_sqlite_utils():
    """sqlite-utils imports pandas at import time when it is installed (ray[data] brings it),
    only to map pandas.Timestamp to a column type, which latent never inserts; pandas and the
    pyarrow it loads cost about 0.8 s of every cold command. So pandas is hidden while
    sqlite-utils loads, unless something loaded it already; it imports normally afterwards."""
    import sys

    if "pandas" in sys.modules or "sqlite_utils" in sys.modules:
        import sqlite_utils
        return sqlite_utils
    sys.modules["pandas"] = None  # `import pandas` raises ImportError meanwhile
    try:
        import sqlite_utils
    finally:
        del sys.modules["pandas"]
    return sqlite_utils


sqlite_utils = _import_sqlite_utils()

from . import failpoints  # noqa: E402
from .errors import FilterError, IndexCorrupt, IndexExists, KeywordQueryError, ReadOnlyIndex, StorageError  # noqa: E402
from .filters import index_expression  # noqa: E402

DB_NAME = "latent.db"
FORMAT_VERSION = 1
_CHUNK = 50_000  # ids per `IN (json_each(?))` query


def _m001_initial(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE items (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            text TEXT,
            path TEXT,
            content_hash TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            vector BLOB NOT NULL,
            generation INTEGER NOT NULL
        );
        CREATE INDEX items_generation ON items(generation);
        CREATE TABLE deleted (id INTEGER PRIMARY KEY, key TEXT NOT NULL, generation INTEGER NOT NULL);
        CREATE INDEX deleted_generation ON deleted(generation);
        CREATE TABLE skipped (
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL,
            line INTEGER,
            reason TEXT NOT NULL,
            at TEXT NOT NULL
        );
        """
    )


def _m002_content_hash_index(db: sqlite_utils.Database) -> None:
    db.execute("CREATE INDEX items_content_hash ON items(content_hash)")


def _m003_skips_once(db: sqlite_utils.Database) -> None:
    """Each skip once per (source, line, reason): adding an input again refreshes its rows'
    time instead of adding rows (the table grew by every run's skips before)."""
    db.execute("DELETE FROM skipped WHERE id NOT IN "
               "(SELECT max(id) FROM skipped GROUP BY source, coalesce(line, -1), reason)")
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS skipped_once ON skipped(source, coalesce(line, -1), reason)")


def _m004_vectors_table(db: sqlite_utils.Database) -> None:
    """Vectors out of the metadata rows: a filter scans `items`, which held each item's vector
    blob (a 384-d one is 1.5 KB: a page held two rows, so a scan of 1M rows read 1.5 GB).
    One transaction (see Store.migrate): an interrupted migration leaves the old layout."""
    db.execute("CREATE TABLE vectors (id INTEGER PRIMARY KEY, vector BLOB NOT NULL)")
    db.execute("INSERT INTO vectors(id, vector) SELECT id, vector FROM items")
    db.execute("ALTER TABLE items DROP COLUMN vector")



# The keyword index (SQLite FTS5, ranked by BM25) over the texts of items, words excepted: an
# external-content table (it stores the tokens, not a second copy of the texts) kept in step with
# `items` by triggers, so every write (a batch, a replacement, a deletion, a repair) updates it in
# its own transaction. Words (GloVe vocabularies: 400,000 one-word items) are left out: a word
# index's keyword search would only find a word by itself, which its key already does.
# Tokens: unicode61 with remove_diacritics 2 (case and accents folded, split at punctuation, so
# `read_csv` is the phrase "read csv" and `GPL-3.0` the phrase "gpl 3 0"), then Porter stemming
# (English: "tsunamis" finds "tsunami"); chosen by benchmarks/bench_hybrid.py, where it beat
# unicode61 alone and trigrams (keyword nDCG@10 0.406 against 0.384 and 0.367).
FTS_TABLE = "items_fts"
FTS_TOKENIZE = "porter unicode61 remove_diacritics 2"
_FTS_INDEXED = "{row}.text IS NOT NULL AND {row}.kind != 'word'"


def _m005_keyword_index(db: sqlite_utils.Database) -> None:
    """The keyword index and its triggers, filled from the items in this migration's transaction
    (idempotent: a second run starts the index over)."""
    new, old = _FTS_INDEXED.format(row="new"), _FTS_INDEXED.format(row="old")
    for statement in (  # one by one: executescript would commit the migration's transaction first
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
        f"text, content='items', content_rowid='id', tokenize='{FTS_TOKENIZE}')",
        f"CREATE TRIGGER IF NOT EXISTS items_fts_insert AFTER INSERT ON items WHEN {new} BEGIN "
        f"INSERT INTO {FTS_TABLE}(rowid, text) VALUES (new.id, new.text); END",
        f"CREATE TRIGGER IF NOT EXISTS items_fts_delete AFTER DELETE ON items WHEN {old} BEGIN "
        f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text) VALUES ('delete', old.id, old.text); END",
        f"CREATE TRIGGER IF NOT EXISTS items_fts_update AFTER UPDATE OF text, kind ON items BEGIN "
        f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text) SELECT 'delete', old.id, old.text WHERE {old}; "
        f"INSERT INTO {FTS_TABLE}(rowid, text) SELECT new.id, new.text WHERE {new}; END",
    ):
        db.execute(statement)
    db.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('delete-all')")
    db.execute(f"INSERT INTO {FTS_TABLE}(rowid, text) SELECT id, text FROM items WHERE {_FTS_INDEXED.format(row='items')}")


# Schema migrations, applied in order; PRAGMA user_version counts those applied.
MIGRATIONS = [_m001_initial, _m002_content_hash_index, _m003_skips_once, _m004_vectors_table, _m005_keyword_index]
VECTORS_TABLE_VERSION = 4  # the schema version from which vectors have their own table


FIELD_INDEX_PREFIX = "field:"  # SQLite's name of the expression index on a metadata field: "field:year"
BUSY_TIMEOUT_MS = 30_000
# The -wal file is cut back to this size when it restarts: a reader holding a snapshot during a
# long add lets it grow (every commit appends until the reader moves on), and SQLite keeps the
# file's size for reuse otherwise. Writes also end with a checkpoint (Store.checkpoint).
JOURNAL_SIZE_LIMIT = 32 << 20


def _connect(path: Path) -> sqlite_utils.Database:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db = sqlite_utils.Database(conn)
    if db.journal_mode != "wal":
        db.enable_wal()
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    return db


def _writable(path: Path) -> bool:
    """Whether this process may write the store at `path`: its directory (SQLite creates the
    -wal and -shm files there, and latent the write lock) and latent.db with its -wal and -shm."""
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return os.access(path.parent, os.W_OK) and all(os.access(f, os.W_OK) for f in files if f.exists())


def _connect_read_only(path: Path) -> sqlite_utils.Database:
    """A connection that never writes: `mode=ro`, which reads the -wal through the -shm file of
    the writers; where there is no -shm (no connection is open) and it cannot be created,
    `immutable=1`, which reads latent.db as it is (every write ends with a checkpoint that
    moves the -wal into it), assuming that no writer comes while it is open."""
    uri = path.resolve().as_uri()
    try:
        return _open_uri(f"{uri}?mode=ro")
    except sqlite3.OperationalError:  # no -shm file, and none can be created
        return _open_uri(f"{uri}?mode=ro&immutable=1")


def _open_uri(uri: str) -> sqlite_utils.Database:
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError:
        conn.close()
        raise
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if 0 < version < VECTORS_TABLE_VERSION:
        # an index of the older layout (vectors inside `items`), which this reader may not migrate:
        # a view in the connection's own temporary schema gives every query its `vectors` table
        conn.execute("CREATE TEMP VIEW vectors AS SELECT id, vector FROM main.items")
    return sqlite_utils.Database(conn)


# FTS5's words for a MATCH expression it cannot parse
_FTS_QUERY_ERROR = re.compile(r"fts5:|unterminated string|no such column|unknown special query|malformed MATCH")
# SQLite's words for a statement it cannot parse or plan (as opposed to a damaged database)
_QUERY_TOO_COMPLEX = re.compile(r"parser stack overflow|too large|too many|too deep|depth", re.IGNORECASE)
ROW_CACHE_BYTES = 64 << 20  # rows of recent hits kept in memory, per open store (see Store.cached_rows)
WRITE_CACHE_BYTES_PER_ROW = 384  # SQLite's page cache for a large batch, per new item (see Store._page_cache_for)
WRITE_CACHE_MAX_BYTES = 256 << 20
FILTER_CACHE_ENTRIES = 32  # answers of recent filters kept per open store (see Store.ids_where)
_ROW_OVERHEAD = 400  # bytes of a cached row beyond its strings (tuple, ints, small dicts), roughly
_BOUND_IDS = 256  # up to this many ids are bound as parameters (one cached statement per count)


@lru_cache(maxsize=_BOUND_IDS)
def _marks(n: int) -> str:
    return ",".join("?" * n)


def _json_ids(ids: Sequence[int]) -> str:
    return json.dumps([int(i) for i in ids])


class SnapshotMoved(Exception):
    """A lazy snapshot (Store.lazy_snapshot) found, at its first statement, that a write had
    committed since its generation was vouched for: the caller starts again with a snapshot that
    reads the generation first. Internal: search_vectors retries on it; it never reaches users."""


_END, _MOVED = object(), object()  # Store.read_ahead's signals: all read; the store moved on


class _Failed:
    """An exception of Store.read_ahead's thread, raised in the caller's."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class _Connection:
    """One thread's connection to a store: closed when that thread ends, or with the store."""

    __slots__ = ("db", "conn", "close", "pending", "__weakref__")

    def __init__(self, db: sqlite_utils.Database):
        self.db = db
        self.conn = db.conn  # the hot read path calls sqlite3 directly (sqlite-utils' execute parses each SQL)
        self.close = weakref.finalize(self, db.conn.close)
        self.pending: int | None = None  # a lazy snapshot's generation, until its first statement


class _Commits:
    """SQLite's own record of commits, read without a statement: the wal-index header, the first
    48 bytes of the -shm file (kept twice, as bytes 0-47 and 48-95), which every commit of every
    connection rewrites (its change counter, frame count and checksums) before the commit can be
    read, and which SQLite itself compares to learn whether its cached snapshot is still current.
    A look is a 96-byte copy from a read-only mapping (about 0.3 us, against 2-3 us for the
    statements of a read transaction).

    The mapping is made from the file descriptor SQLite itself holds (found in /proc/self/fd),
    with libc's mmap: opening and closing a descriptor of our own (Python's mmap closes the
    duplicate it makes) would drop every POSIX lock this process holds on the file, SQLite's
    included, after which another process could truncate it under the mapping. The store keeps
    a connection of its own open while mapped, whose lock on the file keeps SQLite from
    truncating or deleting it. Where any of this is missing (no -shm file, as for an
    `immutable` reader; no /proc) a look says "unknown", and snapshots read the generation."""

    __slots__ = ("address", "keeper", "failed", "lock")
    PAGE = 4096

    def __init__(self):
        self.address: int | None = None
        self.keeper: sqlite3.Connection | None = None
        self.failed = False
        self.lock = threading.Lock()

    def open(self, path: Path, connect) -> None:
        try:
            keeper = connect(path).conn
        except (sqlite3.Error, OSError):
            self.failed = True
            return
        try:
            keeper.execute("SELECT count(*) FROM manifest").fetchone()  # opens (and keeps open) the wal-index
            address = _map_read_only(os.path.realpath(path.with_name(path.name + "-shm")), self.PAGE)
        except (sqlite3.Error, OSError):
            address = None
        if address is None:
            keeper.close()
            self.failed = True
            return
        self.address, self.keeper = address, keeper

    def mark(self) -> bytes | None:
        """The header now, or None when it cannot be read or a writer is midway through rewriting it."""
        if self.address is None:
            return None
        with self.lock:  # never a read of an unmapped page (close, in another thread)
            if self.address is None:
                return None
            both = ctypes.string_at(self.address, 96)
        return both[:48] if both[:48] == both[48:] else None

    def close(self) -> None:
        with self.lock:
            if self.address is not None:
                _libc().munmap(self.address, self.PAGE)
                self.address = None
        if self.keeper is not None:
            self.keeper.close()
            self.keeper = None


@lru_cache(maxsize=1)
def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def _give_back_freed_memory() -> None:
    """Return the heap memory freed so far to the system, where the C library can (glibc's
    malloc_trim): the pages of a large write's cache are thousands of small blocks, which the
    heap keeps otherwise (GloVe's 390,000 words: RSS after the write 631 MiB without this, 555
    MiB with it, 542 MiB with no write cache at all)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _map_read_only(target: str, size: int) -> int | None:
    """A read-only shared mapping of the file `target` through a descriptor this process already
    holds open (SQLite's), or None when there is none or mapping fails (see _Commits)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir() or not hasattr(os, "fstat"):
        return None
    for name in os.listdir(fds):
        try:
            if os.readlink(fds / name) != target:
                continue
            fd = int(name)
            if os.fstat(fd).st_size < size:
                continue
        except OSError:
            continue
        address = _libc().mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        return None if address in (None, ctypes.c_void_p(-1).value) else address
    return None


class _Cache:
    """Rows of hits and answers of filters, all read at one generation (see Store.cached_rows)."""

    __slots__ = ("generation", "rows", "bytes", "filters")

    def __init__(self, generation: int):
        self.generation = generation
        self.rows: dict[int, tuple] = {}
        self.bytes = 0
        self.filters: dict[tuple, np.ndarray] = {}  # (filter SQL, params) -> ids


class _LazyRead:
    """Store.lazy_snapshot's context: no statement on entry; the read transaction begins at this
    thread's first statement inside it (see Store.conn), which checks the generation then."""

    __slots__ = ("store", "connection", "generation")

    def __init__(self, store: "Store", generation: int):
        self.store, self.generation = store, generation

    def __enter__(self) -> "Store":
        self.connection = self.store._connection()
        self.connection.pending = self.generation
        return self.store

    def __exit__(self, *exc) -> None:
        connection = self.connection
        if connection.pending is not None:  # no statement ran: nothing to end
            connection.pending = None
        elif connection.conn.in_transaction:
            connection.conn.execute("COMMIT")


class _ReadTransaction:
    """Store.snapshot's context (a class: on the path of every search, where a generator's
    context costs a microsecond more); inside a transaction of the thread, it is that one."""

    __slots__ = ("store", "conn", "began")

    def __init__(self, store: "Store"):
        self.store, self.conn = store, store.conn

    def __enter__(self) -> "Store":
        self.began = not self.conn.in_transaction
        if self.began:
            self.conn.execute("BEGIN")
        return self.store

    def __exit__(self, *exc) -> None:
        if self.began:
            self.conn.execute("COMMIT")


class Store:
    """One index directory's SQLite database. Threads may share a Store: each reads and writes
    through its own connection (opened on first use), so each has its own transactions."""

    def __init__(self, db: sqlite_utils.Database, path: Path, *, read_only: bool = False):
        self.path = path
        self.read_only = read_only  # opened without write access: every write raises ReadOnlyIndex
        self._local = threading.local()  # .connection: this thread's _Connection
        self._connections: weakref.WeakSet = weakref.WeakSet()  # every thread's, each owned by its thread
        self._closed = False
        self._cache = _Cache(-1)  # replaced, never emptied in place, when the generation moves
        self._cache_lock = threading.Lock()
        self._commits = _Commits()  # opened on the first snapshot
        self._quiet: tuple[bytes, int] | None = None  # (wal-index header, the generation read after it)
        self._adopt(db)

    # -- connections -----------------------------------------------------------------------
    def _adopt(self, db: sqlite_utils.Database) -> _Connection:
        connection = _Connection(db)
        with self._cache_lock:
            if self._closed:
                connection.close()
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            self._connections.add(connection)
        self._local.connection = connection
        return connection

    def _connection(self) -> _Connection:
        """This thread's connection, opened on its first use."""
        try:
            return self._local.connection
        except AttributeError:
            return self._adopt(_connect_read_only(self.path) if self.read_only else _connect(self.path))

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection, as sqlite-utils' Database."""
        connection = self._connection()
        if connection.pending is not None:
            self._begin_pending(connection)
        return connection.db

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (inside a lazy snapshot, its read transaction begun)."""
        connection = self._connection()
        if connection.pending is not None:
            self._begin_pending(connection)
        return connection.conn

    def _begin_pending(self, connection: _Connection) -> None:
        """The first statement of a lazy snapshot: begin its read transaction and check that it
        reads the generation the snapshot was entered at (SnapshotMoved if a write came between)."""
        expected, connection.pending = connection.pending, None
        connection.conn.execute("BEGIN")
        if self._read_generation(connection.conn) != expected:
            raise SnapshotMoved(expected)

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: Path, manifest: dict) -> "Store":
        path = Path(directory) / DB_NAME
        store = cls(_connect(path), path)
        rows = {**manifest, "format_version": FORMAT_VERSION, "generation": 0,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            # the schema and the manifest in one transaction, so that a create killed midway leaves
            # an empty file (which a create takes over, see holds_store); plain INSERTs: an existing
            # manifest is never overwritten
            with store._write_lock():
                store.migrate()
                store.db.conn.executemany("INSERT INTO manifest(key, value) VALUES (?, ?)",
                                          [(key, json.dumps(value)) for key, value in rows.items()])
        except sqlite3.IntegrityError:
            store.close()
            raise IndexExists(f"{directory} already holds an index (created by another process meanwhile); "
                              "open it, or choose another directory") from None
        return store

    @staticmethod
    def holds_store(directory: Path) -> bool:
        """Whether `directory` holds a store: a latent.db with a schema (not the empty file that a
        create killed before its commit leaves), or a file SQLite cannot read (never replaced)."""
        path = Path(directory) / DB_NAME
        if not path.exists():
            return False
        try:
            conn = sqlite3.connect(str(path), timeout=30)
            try:
                return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            return True

    @classmethod
    def open(cls, directory: Path) -> "Store":
        path = Path(directory) / DB_NAME
        try:
            read_only = not _writable(path)
            store = cls(_connect_read_only(path) if read_only else _connect(path), path, read_only=read_only)
            if store.db.execute("PRAGMA user_version").fetchone()[0] == 0:  # never migrated: not ours
                store.close()
                raise IndexCorrupt(f"{path} is empty or not a latent store; if its create was interrupted, create "
                                   "the index again, else restore it from a backup (it is the source of truth)")
            if not read_only:  # a reader without write access reads the schema as it is (migrations add indexes)
                store.migrate()
            missing = {"encoder", "dim", "generation", "index_type"} - set(store.manifest())
            if missing:
                store.close()
                raise IndexCorrupt(f"{path} has lost its manifest ({', '.join(sorted(missing))} missing); "
                                   "restore it from a backup")
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" not in str(e):
                raise StorageError(f"cannot open {path} ({e})") from e
            raise IndexCorrupt(f"{path} is not a readable latent store ({e}); it is the source of truth, "
                               "so restore it from a backup") from e
        return store

    def migrate(self) -> None:
        """Apply the migrations this store lacks, each in one transaction with its version number:
        one killed midway leaves the schema as it was, and is done again by the next open. Each
        takes the write lock first (BEGIN IMMEDIATE) and reads the version again, so that two
        processes opening an older index at once migrate it once. A current store (every open
        but the first after an upgrade) is not locked at all: opening never takes the write lock."""
        if self.conn.execute("PRAGMA user_version").fetchone()[0] >= len(MIGRATIONS):
            return
        while True:
            with self._write_lock():  # in a create, a savepoint of its transaction (schema and manifest)
                version = self.conn.execute("PRAGMA user_version").fetchone()[0]
                if version >= len(MIGRATIONS):
                    return
                MIGRATIONS[version](self.db)
                self.conn.execute(f"PRAGMA user_version = {version + 1}")

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """A write transaction that holds the write lock from its start (BEGIN IMMEDIATE), or a
        savepoint inside this thread's open transaction. A deferred BEGIN would read first and
        take the lock at its first write; if another process committed in between, SQLite fails
        that write at once ("database is locked", SQLITE_BUSY_SNAPSHOT) instead of waiting."""
        conn = self.conn
        if conn.in_transaction:
            with self.db.atomic():
                yield
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close every thread's connection."""
        with self._cache_lock:
            self._closed = True
            connections = list(self._connections)
            self._commits.close()
            self._quiet = None
        for connection in connections:
            connection.close()

    @contextmanager
    def transaction(self, what: str) -> Iterator[None]:
        """One write transaction. A failure to write (a full disk, an I/O error) rolls it back
        and raises StorageError saying so; after the commit, the `commit` failpoint."""
        self.require_writable(what)
        self._forget_rows()
        outer, self._local.writing = getattr(self._local, "writing", False), True
        try:
            with self._write_lock():
                yield
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise
        except sqlite3.DatabaseError as e:
            raise StorageError(f"could not write {self.path} ({e}); {what} was rolled back, "
                               "nothing of it is stored") from e
        finally:
            self._local.writing = outer
            self._forget_rows()  # and again: a search in another thread may have read rows meanwhile
        failpoints.hit("commit")

    def checkpoint(self) -> None:
        """Copy the -wal file into latent.db and truncate it, as far as readers allow and without
        waiting for them (a reader's snapshot keeps the frames it may read; a later checkpoint
        takes them). After large writes: the -wal file would otherwise keep its largest size."""
        self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError:  # another connection is checkpointing or writing: it will do
            pass
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def require_writable(self, what: str) -> None:
        """Raise ReadOnlyIndex, naming `what`, when this store was opened without write access."""
        if self.read_only:
            raise ReadOnlyIndex(f"{self.path.parent} is read-only for this process (a read-only mount, or no "
                                f"write permission): {what} needs write access to the directory and {DB_NAME}; "
                                "searching it works")

    def snapshot(self) -> "_ReadTransaction":
        """A read transaction of this thread: every query inside sees one generation of the store."""
        return _ReadTransaction(self)

    def lazy_snapshot(self, generation: int) -> "_LazyRead":
        """A read transaction at `generation` that runs no statement until one is needed (a search
        answered from memory runs none); its first statement raises SnapshotMoved if the store
        has moved on. Only for a generation that `unchanged_since` vouched for."""
        return _LazyRead(self, generation)

    def unchanged_since(self, generation: int) -> bool:
        """True when the store is still at `generation`, known without a statement: the
        wal-index header (see _Commits) is the one `snapshot_generation` saw before it read
        `generation`, so nothing committed since. False when that cannot be told."""
        quiet = self._quiet
        return quiet is not None and quiet[1] == generation and quiet[0] == self._commits.mark()

    def snapshot_generation(self) -> int:
        """The generation, read inside a snapshot, remembered with the wal-index header seen
        before the read (see unchanged_since)."""
        commits = self._commits
        if commits.address is None and not commits.failed and not self._closed:
            with self._cache_lock:
                if commits.address is None and not commits.failed and not self._closed:
                    commits.open(self.path, _connect_read_only if self.read_only else _connect)
        mark = commits.mark()
        generation = self._read_generation(self.conn)
        if mark is not None and not getattr(self._local, "writing", False):  # (a write's own, uncommitted one: never)
            self._quiet = (mark, generation)
        return generation

    @staticmethod
    def _read_generation(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM manifest WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0  # stored as JSON: an integer's JSON is its digits

    # -- manifest ----------------------------------------------------------------------------
    def _set(self, key: str, value) -> None:
        self.db.execute(
            "INSERT INTO manifest(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, json.dumps(value)],
        )

    def manifest(self) -> dict:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM manifest").fetchall()}

    def set_manifest(self, **values) -> None:
        with self.transaction("the manifest update"):
            for key, value in values.items():
                self._set(key, value)

    def generation(self) -> int:
        return self._read_generation(self.conn)

    def _bump_generation(self) -> int:
        generation = self.generation() + 1
        self._set("generation", generation)
        return generation

    # -- writes --------------------------------------------------------------------------------
    def write_batch(self, rows: Sequence[dict], *, replace_ids: Sequence[int] = (),
                    metadata_updates: Sequence[tuple[int, str]] = ()) -> tuple[int, np.ndarray]:
        """In one transaction: delete `replace_ids`, insert `rows`, update metadata; bump the generation.

        Each row has key, kind, text, path, content_hash, metadata (JSON text) and vector
        (float32 array). Returns (generation, ids of the inserted rows in `rows` order).
        """
        with self._page_cache_for(len(rows)), self.transaction("the batch"):
            generation = self._bump_generation()
            if replace_ids:
                self._delete_ids(replace_ids, generation)
            if metadata_updates:
                self.db.conn.executemany("UPDATE items SET metadata = ? WHERE id = ?",
                                         [(meta, int(i)) for i, meta in metadata_updates])
            self.db.conn.executemany(
                "INSERT INTO items(key, kind, text, path, content_hash, metadata, generation) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r["key"], r["kind"], r.get("text"), r.get("path"), r["content_hash"], r["metadata"], generation)
                 for r in rows],
            )
            by_key = dict(self.db.execute("SELECT key, id FROM items WHERE generation = ?", [generation]).fetchall())
            ids = np.array([by_key[r["key"]] for r in rows], dtype=np.int64)
            self.db.conn.executemany("INSERT INTO vectors(id, vector) VALUES (?, ?)",
                                     [(int(i), np.asarray(r["vector"], dtype=np.float32).tobytes())
                                      for i, r in zip(ids, rows)])
        return generation, ids

    @contextmanager
    def _page_cache_for(self, rows: int) -> Iterator[None]:
        """SQLite's page cache, for one transaction of `rows` new items, large enough to hold the
        pages it changes (WRITE_CACHE_BYTES_PER_ROW each, at most WRITE_CACHE_MAX_BYTES); smaller
        again afterwards, its memory freed. With SQLite's default 2 MB, a large batch spilled pages
        of the key and content-hash indexes (changed at random places) to the -wal file and
        changed them again: storing GloVe's 390,000 words took 20.1 s, and 8.9 s with this cache."""
        wanted = min(rows * WRITE_CACHE_BYTES_PER_ROW, WRITE_CACHE_MAX_BYTES) // 1024
        conn = self.conn
        before = conn.execute("PRAGMA cache_size").fetchone()[0]
        current = before * conn.execute("PRAGMA page_size").fetchone()[0] // 1024 if before > 0 else -before
        if wanted <= current:
            yield
            return
        conn.execute(f"PRAGMA cache_size = -{wanted}")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA cache_size = {before}")
            conn.execute("PRAGMA shrink_memory")
            _give_back_freed_memory()

    def _delete_ids(self, ids: Sequence[int], generation: int) -> None:
        for start in range(0, len(ids), _CHUNK):
            chunk = _json_ids(ids[start:start + _CHUNK])
            self.db.execute(
                "INSERT OR REPLACE INTO deleted(id, key, generation) "
                "SELECT id, key, ? FROM items WHERE id IN (SELECT value FROM json_each(?))",
                [generation, chunk],
            )
            self.db.execute("DELETE FROM items WHERE id IN (SELECT value FROM json_each(?))", [chunk])
            self.db.execute("DELETE FROM vectors WHERE id IN (SELECT value FROM json_each(?))", [chunk])

    def delete_keys(self, keys: Sequence[str]) -> tuple[int, np.ndarray, list[str]]:
        """Delete items by key in one transaction. Returns (generation, deleted ids, keys not found)."""
        keys = list(dict.fromkeys(keys))  # a key given twice is one item
        with self.transaction("the deletion"):
            found = self.lookup(keys)
            ids = [found[k][0] for k in keys if k in found]
            generation = self._bump_generation()
            self._delete_ids(ids, generation)
        return generation, np.array(ids, dtype=np.int64), [k for k in keys if k not in found]

    def record_skips(self, skips: Iterable[tuple[str, int | None, str]]) -> None:
        """Record (source, line, reason) skips; one seen before only gets the new time."""
        at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self.transaction("the record of skipped inputs"):
            self.db.conn.executemany("INSERT OR REPLACE INTO skipped(source, line, reason, at) VALUES (?, ?, ?, ?)",
                                     [(s, line, reason, at) for s, line, reason in skips])

    # -- reads ---------------------------------------------------------------------------------
    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM items").fetchone()[0]

    def kind_counts(self) -> dict[str, int]:
        """Items per kind (text, word, image, vector)."""
        return dict(self.db.execute("SELECT kind, count(*) FROM items GROUP BY kind ORDER BY kind").fetchall())

    def lookup(self, keys: Sequence[str]) -> dict[str, tuple[int, str, str]]:
        """key -> (id, content_hash, metadata JSON) for the keys that exist."""
        out = {}
        keys = list(keys)
        for start in range(0, len(keys), _CHUNK):
            rows = self.db.execute(
                "SELECT key, id, content_hash, metadata FROM items WHERE key IN (SELECT value FROM json_each(?))",
                [json.dumps(keys[start:start + _CHUNK])],
            ).fetchall()
            out.update({key: (i, h, m) for key, i, h, m in rows})
        return out

    def keys_of_hashes(self, hashes: Sequence[str]) -> dict[str, str]:
        """content hash -> key of a stored item with that content, for the hashes that exist."""
        out: dict[str, str] = {}
        for start in range(0, len(hashes), _CHUNK):
            rows = self.db.execute(
                "SELECT content_hash, min(key) FROM items WHERE content_hash IN (SELECT value FROM json_each(?)) "
                "GROUP BY content_hash", [json.dumps(list(hashes[start:start + _CHUNK]))]).fetchall()
            out.update(dict(rows))
        return out

    def fetch(self, ids: Sequence[int]) -> dict[int, dict]:
        """id -> {key, kind, text, path, metadata} for the ids that exist."""
        return {i: {"key": key, "kind": kind, "text": text, "path": path, "metadata": meta}
                for i, (key, kind, text, path, meta) in self.rows(ids).items()}

    def rows(self, ids: Sequence[int]) -> dict[int, tuple[str, str, str | None, str | None, dict]]:
        """id -> (key, kind, text, path, metadata) for the ids that exist: `fetch` as tuples,
        for the query path (a search's few hits are one cached statement with bound ids)."""
        out = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            if len(chunk) <= _BOUND_IDS:
                sql = f"SELECT id, key, kind, text, path, metadata FROM items WHERE id IN ({_marks(len(chunk))})"
                cursor = self.conn.execute(sql, chunk)
            else:
                cursor = self.conn.execute(
                    "SELECT id, key, kind, text, path, metadata FROM items WHERE id IN (SELECT value FROM json_each(?))",
                    [json.dumps(chunk)])
            for i, key, kind, text, path, meta in cursor:
                out[i] = (key, kind, text, path, {} if meta == "{}" else json.loads(meta))
        return out

    def cached_rows(self, ids: Sequence[int], generation: int) -> dict[int, tuple]:
        """`rows(ids)` as of `generation` (the store's, read in the caller's snapshot), served
        from memory where an earlier search of that generation read them: every write bumps
        the generation, so a row cached for one generation is that generation's row. The cache
        holds up to ROW_CACHE_BYTES of rows and starts over when it is full or stale."""
        cache = self._cache_at(generation)
        rows = cache.rows
        out, missing = {}, []
        for i in ids:
            row = rows.get(i)
            if row is None:
                missing.append(i)
            else:
                out[i] = row
        if missing:
            fetched = self.rows(missing)
            out.update(fetched)
            size = sum(_ROW_OVERHEAD + len(r[0]) + len(r[2] or "") + len(r[3] or "") for r in fetched.values())
            with self._cache_lock:
                if cache.bytes + size > ROW_CACHE_BYTES:
                    rows.clear()
                    cache.bytes = 0
                rows.update(fetched)
                cache.bytes += size
        return out

    def _cache_at(self, generation: int) -> _Cache:
        """The row and filter cache of `generation`: a new, empty one if the current one is another's.
        A thread holding an older one keeps filling it with what it reads at that generation."""
        cache = self._cache
        if cache.generation != generation:
            with self._cache_lock:
                cache = self._cache
                if cache.generation != generation:
                    cache = self._cache = _Cache(generation)
        return cache

    def _forget_rows(self) -> None:
        """Drop cached rows and filter answers: this process wrote (a write that keeps the generation included)."""
        with self._cache_lock:
            self._cache = _Cache(-1)

    def vectors(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """Stored vectors of `ids`, in that order (all must exist)."""
        found: dict[int, bytes] = {}
        for start in range(0, len(ids), _CHUNK):
            found.update(self.db.execute(
                "SELECT id, vector FROM vectors WHERE id IN (SELECT value FROM json_each(?))",
                [_json_ids(ids[start:start + _CHUNK])],
            ).fetchall())
        return _to_matrix([found.get(int(i), b"") for i in ids], dim)

    def vector_of_key(self, key: str, dim: int) -> np.ndarray | None:
        row = self.db.execute("SELECT i.id, v.vector FROM items AS i LEFT JOIN vectors AS v ON v.id = i.id "
                              "WHERE i.key = ?", [key]).fetchone()
        return None if row is None else _to_matrix([row[1] or b""], dim)[0]

    def iter_vectors(self, dim: int, *, since_generation: int = 0, block: int = 50_000,
                     skip_damaged: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) blocks, in id order, of the items written after `since_generation`
        (without the vectors of a wrong length, with `skip_damaged`)."""
        last = -1
        length, extra = ("AND length(v.vector) = ?", [4 * dim]) if skip_damaged else ("", [])
        while True:
            rows = self.db.execute(
                "SELECT i.id, v.vector FROM items AS i LEFT JOIN vectors AS v ON v.id = i.id "
                f"WHERE i.generation > ? AND i.id > ? {length} ORDER BY i.id LIMIT ?",
                [since_generation, last, *extra, block],
            ).fetchall()
            if not rows:
                return
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            yield ids, _to_matrix([r[1] or b"" for r in rows], dim)
            last = int(ids[-1])

    def read_ahead(self, make: Callable[[], Iterator], generation: int) -> Iterator:
        """What `make()` yields (reads of this store), read one item ahead by a thread of its own,
        so that SQLite's reading overlaps the caller's work on the item before (FAISS adding a
        block of vectors). That thread reads in a read transaction of its own connection, which
        must be at `generation`, the caller's: when a write committed in between, it reads
        nothing and the caller reads everything itself, in its own snapshot."""
        handoff: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def produce() -> None:
            try:
                with self.snapshot():
                    if self._read_generation(self.conn) != generation:
                        put(_MOVED)
                        return
                    for item in make():
                        if not put(item):
                            return
                put(_END)
            except BaseException as e:  # raised in the caller
                put(_Failed(e))

        reader = threading.Thread(target=produce, name="latent-read-ahead", daemon=True)
        reader.start()
        try:
            while True:
                item = handoff.get()
                if item is _END:
                    return
                if item is _MOVED:
                    yield from make()
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            stop.set()
            reader.join()

    def deleted_since(self, generation: int) -> np.ndarray:
        rows = self.db.execute("SELECT id FROM deleted WHERE generation > ?", [generation]).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def ids(self) -> np.ndarray:
        rows = self.db.execute("SELECT id FROM items ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def ids_where(self, sql: str, params: Sequence, generation: int | None = None) -> np.ndarray:
        """Ids of the items matching a WHERE clause built by indexer.filters (bound parameters only).

        With `generation` (the store's, read in the caller's snapshot), the answer is kept for
        later searches with the same filter in that generation: a filter scans every row, so a
        filter used again (a facet, a user's saved search) costs nothing the second time."""
        key = (sql, tuple(params))
        cache = self._cache_at(generation) if generation is not None else None
        if cache is not None:
            found = cache.filters.get(key)
            if found is not None:
                return found
        try:
            ids = np.fromiter((r[0] for r in self.conn.execute(f"SELECT id FROM items WHERE {sql}", list(params))),
                              dtype=np.int64)
        except sqlite3.OperationalError as e:
            if not _QUERY_TOO_COMPLEX.search(str(e)):
                raise
            # SQLite refused the statement itself: the filter is at fault, not the database
            raise FilterError(f"filter too complex for SQLite ({e}); simplify it") from None
        ids.flags.writeable = False  # shared by later searches
        if cache is not None:
            with self._cache_lock:
                if len(cache.filters) >= FILTER_CACHE_ENTRIES:
                    cache.filters.pop(next(iter(cache.filters)))
                cache.filters[key] = ids
        return ids

    def has_keyword_index(self) -> bool:
        """Whether the keyword index exists (a store opened read-only before its migration lacks it)."""
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", [FTS_TABLE]).fetchone() is not None

    def has_keyword_texts(self) -> bool:
        """Whether any item has a text in the keyword index (words and images have none)."""
        return self.conn.execute(
            f"SELECT 1 FROM items WHERE {_FTS_INDEXED.format(row='items')} LIMIT 1").fetchone() is not None

    def keyword_index_counts(self) -> tuple[int, int] | None:
        """(texts in the keyword index, items with a text it should hold); None without a keyword index."""
        if not self.has_keyword_index():
            return None
        indexed = self.conn.execute(f"SELECT count(*) FROM {FTS_TABLE}_docsize").fetchone()[0]
        texts = self.conn.execute(f"SELECT count(*) FROM items WHERE {_FTS_INDEXED.format(row='items')}").fetchone()[0]
        return indexed, texts

    def rebuild_keyword_index(self) -> None:
        """Make the keyword index again from the items, in one transaction (a repair)."""
        with self.transaction("the keyword index rebuild"):
            _m005_keyword_index(self.db)

    def keyword_search(self, match: str, k: int, where: tuple[str, Sequence] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, BM25 scores, higher is better) of the k best items for an FTS5 MATCH expression,
        among those a filter (SQL and parameters from indexer.filters) matches. `match` is bound
        as a parameter; FTS5 parses it: a malformed one raises KeywordQueryError."""
        sql = f"SELECT rowid, -bm25({FTS_TABLE}) FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ?"
        params: list = [match]
        if where is not None:
            sql += f" AND rowid IN (SELECT id FROM items WHERE {where[0]})"
            params += list(where[1])
        try:
            rows = self.conn.execute(sql + " ORDER BY rank LIMIT ?", [*params, int(k)]).fetchall()
        except sqlite3.OperationalError as e:
            message = str(e)
            if _FTS_QUERY_ERROR.match(message):
                raise KeywordQueryError(f"cannot read the keyword query {match!r} ({message}); see FTS5 query "
                                        "syntax, or search for plain words (the default)") from None
            if _QUERY_TOO_COMPLEX.search(message):
                raise FilterError(f"query or filter too complex for SQLite ({e}); simplify it") from None
            raise
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, np.array([r[1] for r in rows], dtype=np.float64)

    def index_field(self, field: str) -> bool:
        """An expression index on metadata field `field` (see filters.index_expression), made
        in one transaction; False when it exists already."""
        expression = index_expression(field)
        with self.transaction(f"indexing the field {field}"):
            if field in self.indexed_fields():
                return False
            self.conn.execute(f'CREATE INDEX "{FIELD_INDEX_PREFIX}{field}" ON items({expression})')
            return True

    def drop_field_index(self, field: str) -> bool:
        """Drop the expression index on `field`; False when there is none."""
        with self.transaction(f"dropping the index of the field {field}"):
            if field not in self.indexed_fields():
                return False
            self.conn.execute(f'DROP INDEX "{FIELD_INDEX_PREFIX}{field}"')
            return True

    def indexed_fields(self) -> list[str]:
        """The metadata fields with an expression index, by name."""
        return [name[len(FIELD_INDEX_PREFIX):] for (name,) in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'items' AND substr(name, 1, ?) = ? "
            "ORDER BY name", [len(FIELD_INDEX_PREFIX), FIELD_INDEX_PREFIX])]

    def query_plan(self, sql: str, params: Sequence) -> list[str]:
        """SQLite's plan (EXPLAIN QUERY PLAN) of a filter's scan: which index, if any, it uses."""
        return [r[-1] for r in self.conn.execute(f"EXPLAIN QUERY PLAN SELECT id FROM items WHERE {sql}", list(params))]

    def fields_absent(self, paths: dict[str, str]) -> list[str]:
        """Those of the named JSON paths ({name: path}) that no item's metadata has."""
        return [name for name, path in paths.items() if self.conn.execute(
            "SELECT 1 FROM items WHERE json_type(metadata, ?) IS NOT NULL LIMIT 1", [path]).fetchone() is None]

    def metadata_fields(self, limit: int = 40) -> list[str]:
        """Top-level metadata field names that items have, most common first (at most `limit`)."""
        return [r[0] for r in self.conn.execute(
            "SELECT j.key FROM items, json_each(items.metadata) AS j GROUP BY j.key ORDER BY count(*) DESC, j.key "
            "LIMIT ?", [limit]).fetchall()]

    def skipped(self, limit: int = 1000, source: str | None = None) -> list[dict]:
        """Recorded skips, the latest first (of one source only, if given)."""
        rows = self.db.execute(
            "SELECT source, line, reason, at FROM skipped WHERE ? IS NULL OR source = ? ORDER BY id DESC LIMIT ?",
            [source, source, limit]).fetchall()
        return [dict(zip(("source", "line", "reason", "at"), r)) for r in rows]

    def skipped_count(self, source: str | None = None) -> int:
        return self.db.execute("SELECT count(*) FROM skipped WHERE ? IS NULL OR source = ?",
                               [source, source]).fetchone()[0]

    def clear_skipped(self, source: str | None = None) -> int:
        """Forget the recorded skips (of one source only, if given); returns how many."""
        with self.transaction("clearing the record of skipped inputs"):
            return self.db.conn.execute("DELETE FROM skipped WHERE ? IS NULL OR source = ?",
                                        [source, source]).rowcount

    def damaged_rows(self, dim: int) -> dict[str, list[tuple[int, str, str | None]]]:
        """Rows the engine cannot use, by problem, as (id, key, text) in id order:
        "vector" (a blob of the wrong length or none, or non-finite or zero values), "unreadable" (the
        wrong-length blobs among those, which cannot even be read as vectors), "metadata" (not
        a JSON object) and "generation" (newer than the store's)."""
        queries = {
            "unreadable": ("id NOT IN (SELECT id FROM vectors WHERE length(vector) = ?)", [4 * dim]),
            "metadata": ("NOT json_valid(metadata) OR json_type(metadata) != 'object'", []),
            "generation": ("generation > ?", [self.generation()]),
        }
        found = {problem: self._rows_where(where, params) for problem, (where, params) in queries.items()}
        senseless = []  # readable vectors with no direction: NaN, infinite or all zeros
        for ids, vectors in self.iter_vectors(dim, skip_damaged=True):
            norms = np.linalg.norm(vectors, axis=1)
            senseless += ids[~np.isfinite(norms) | (norms == 0)].tolist()
        more = self._rows_where("id IN (SELECT value FROM json_each(?))", [_json_ids(senseless)]) if senseless else []
        found["vector"] = sorted(found["unreadable"] + more)
        return found

    def _rows_where(self, where: str, params: Sequence) -> list[tuple[int, str, str | None]]:
        return [tuple(r) for r in self.db.execute(
            f"SELECT id, key, text FROM items WHERE {where} ORDER BY id", list(params)).fetchall()]

    def keep_metadata_as_text(self, ids: Sequence[int]) -> None:
        """Replace unreadable metadata by {"_damaged_metadata": <its text>} (a repair)."""
        with self.transaction("the metadata repair"):
            self.db.execute("UPDATE items SET metadata = json_object('_damaged_metadata', metadata) "
                            "WHERE id IN (SELECT value FROM json_each(?))", [_json_ids(ids)])

    def adopt_generation(self, ids: Sequence[int]) -> None:
        """Move rows to the store's current generation (a repair of rows from a future one)."""
        with self.transaction("the generation repair"):
            self.db.execute("UPDATE items SET generation = ? WHERE id IN (SELECT value FROM json_each(?))",
                            [self.generation(), _json_ids(ids)])

    def set_vectors(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Replace the stored vectors of `ids` (a repair: the generation stays)."""
        with self.transaction("the vector repair"):
            self.db.conn.executemany("INSERT OR REPLACE INTO vectors(id, vector) VALUES (?, ?)",
                                     [(int(i), np.asarray(v, np.float32).tobytes()) for i, v in zip(ids, vectors)])

    def integrity_check(self) -> list[str]:
        """SQLite's own integrity check; ['ok'] when healthy."""
        return [r[0] for r in self.db.execute("PRAGMA integrity_check").fetchall()]


def _to_matrix(blobs: list[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    bad = sum(len(b) != 4 * dim for b in blobs)
    if bad:
        raise IndexCorrupt(f"latent.db holds {bad} damaged vector(s) (not {dim} float32 values); "
                           "run `latent check` to list them and `latent rebuild` to re-encode them")
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim).copy()


class SeenKeys:
    """The keys one input has offered so far, and where (source, line): a private temporary
    on-disk SQLite database, so that an input of millions of rows stays in bounded memory."""

    def __init__(self):
        self.conn = sqlite3.connect("", isolation_level=None)  # "": temporary, on disk, deleted on close
        self.conn.execute("CREATE TABLE seen (key TEXT PRIMARY KEY, source TEXT, line INTEGER)")

    def __enter__(self) -> "SeenKeys":
        return self

    def __exit__(self, *exc) -> None:
        self.conn.close()

    def earlier(self, keys: Sequence[str]) -> dict[str, tuple[str, int | None]]:
        """{key: (source, line)} of those of `keys` that an earlier row offered."""
        out: dict[str, tuple[str, int | None]] = {}
        keys = list(keys)
        for start in range(0, len(keys), _CHUNK):
            rows = self.conn.execute("SELECT key, source, line FROM seen WHERE key IN (SELECT value FROM json_each(?))",
                                     [json.dumps(keys[start:start + _CHUNK])]).fetchall()
            out.update({key: (source, line) for key, source, line in rows})
        return out

    def add(self, rows: Sequence[tuple[str, str, int | None]]) -> None:
        """Remember (key, source, line) rows; a key already remembered keeps its first row."""
        with self.conn:
            self.conn.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", rows)
