"""One SQLite database per state directory (``DIR/state.db``) for the state that changes per message.

The replay caches (:mod:`pprm.protocol.replay`), the quota ledger
(:class:`pprm.node.policy.QuotaLedger`) and the requester's outbox
(:mod:`pprm.node.outbox`) were JSON files rewritten whole on every change:
each change cost O(entries), and the outbox was never pruned. They are tables
of this one database now; each change is one transaction touching O(log n)
pages, and each store prunes what can no longer matter as it writes.

Mapping. The stores keep their constructors: each takes the path its JSON
file had (``DIR/replay.json``, ``DIR/quota.json``,
``DIR/outbox.json``) and maps it to ``DIR/state.db`` and a *logical name*,
the file name without ``.json`` (:func:`locate`). Rows carry that name, so
two replay caches of one directory stay separate in the same table.

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`)::

    replay(cache, sender, msg_id, expires)           PRIMARY KEY (cache, sender, msg_id)
    quota(ledger, peer, at, case_ref)                 one row per answered query
    outbox(box, query_id, keep_until, record)         UNIQUE (box, query_id); record: the JSON
                                                      object outbox.json held, key for key
    migrated(name, sha256, entries, at)               legacy JSON files imported (by content hash)

Pragmas, set on every connection: ``journal_mode=WAL`` (readers never block
the one writer; the CLI and ``pprm serve`` may share a directory),
``synchronous=FULL`` (see :func:`_configure`), ``secure_delete=ON`` (pruned
case references and dropped probes are overwritten, not left in free pages),
a busy timeout of :data:`BUSY_TIMEOUT` seconds. A connection lives for one
operation and is closed at its end; the last one to close checkpoints the
write-ahead log into ``state.db`` and deletes it, so between operations the
directory holds the one file.

Migration. A store whose JSON file still exists imports it on its next
operation (:meth:`StateDB.migrate`): in one transaction the entries and a
``migrated`` row naming the file's SHA-256; then the file is deleted. A
crash before the commit leaves the file and no entry; a crash after it
leaves the file, which the next operation recognises by its hash and only
deletes: nothing is lost, nothing is counted twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pprm.errors import StateError

__all__ = ["StateDB", "Legacy", "locate", "DB_NAME", "SCHEMA_VERSION", "BUSY_TIMEOUT"]

DB_NAME = "state.db"
SCHEMA_VERSION = 1
# Seconds a connection waits for another process's write (or checkpoint) to
# finish. Writers also hold the state's file lock around check-and-add, so a
# wait is one short transaction of another process, never a whole operation.
BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replay (
    cache   TEXT    NOT NULL,
    sender  TEXT    NOT NULL,
    msg_id  TEXT    NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (cache, sender, msg_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS replay_by_expiry ON replay (cache, expires);

CREATE TABLE IF NOT EXISTS quota (
    ledger   TEXT    NOT NULL,
    peer     TEXT    NOT NULL,
    at       INTEGER NOT NULL,
    case_ref TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS quota_by_peer ON quota (ledger, peer, at);
CREATE INDEX IF NOT EXISTS quota_by_time ON quota (ledger, at);

CREATE TABLE IF NOT EXISTS outbox (
    box        TEXT    NOT NULL,
    query_id   TEXT    NOT NULL,
    keep_until INTEGER NOT NULL,
    record     TEXT    NOT NULL,
    UNIQUE (box, query_id)
);
CREATE INDEX IF NOT EXISTS outbox_by_keep ON outbox (box, keep_until);

CREATE TABLE IF NOT EXISTS migrated (
    name    TEXT    NOT NULL,
    sha256  TEXT    NOT NULL,
    entries INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (name, sha256)
);
"""


def locate(path: str) -> tuple[str, str]:
    """Where a store that used to be the JSON file ``path`` lives now.

    Args:
        path: the store's former file, e.g. ``DIR/replay.json``.

    Returns:
        ``(directory, logical name)``: the database is ``directory/state.db``
        and the store's rows carry the name (``"replay"``).

    Raises:
        StateError: the file name leaves no name (``DIR/.json``).
    """
    directory, base = os.path.split(os.path.abspath(path))
    name = base[:-len(".json")] if base.endswith(".json") else base
    if not name:
        raise StateError(f"{path} names no store")
    return directory, name


@dataclass(frozen=True)
class Legacy:
    """A store's former JSON file, and how to import it.

    Attributes:
        path: the JSON file.
        name: the store's logical name.
        parse: the file's bytes -> entries; raises :class:`StateError` when
            the file is corrupt (nothing is then written).
        load: writes parsed entries into the open transaction; returns how
            many it wrote.
    """

    path: str
    name: str
    parse: Callable[[bytes], Any]
    load: Callable[[sqlite3.Connection, Any], int]


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class StateDB:
    """The database of one state directory; every store of the directory goes through it.

    Args:
        directory: the state directory (``state.db`` is created in it on the
            first write, mode 0600).
    """

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, DB_NAME)

    def __repr__(self) -> str:
        return f"StateDB({self.directory!r})"

    def exists(self) -> bool:
        """Whether the database file exists (a store with no file yet reads as empty)."""
        return os.path.exists(self.path)

    # -- connections -----------------------------------------------------------------------
    def _create(self) -> None:
        """Create an empty ``state.db`` with mode 0600, whatever the umask, if there is none."""
        # SQLite would create the file with the umask's mode, and makes its
        # -wal and -shm files with the database's mode: set it before it
        # ever opens the file. The file is made beside and linked into place
        # with no descriptor left open on it: closing any descriptor of a
        # file drops every POSIX lock this process holds on it, SQLite's too.
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            os.fchmod(fd, 0o600)
            os.close(fd)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            except OSError:
                # No hard links here: create in place. Nothing can have the
                # file open yet, as it did not exist a moment ago.
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(self.directory)

    def _open(self) -> sqlite3.Connection:
        uri = "file:" + urllib.parse.quote(self.path) + "?mode=rw"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=True)
        try:
            _configure(conn)
            self._schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StateError(f"{self.path} was written by a newer pprm (schema {version}, this one reads "
                             f"{SCHEMA_VERSION})")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have made the tables.
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _error(self, exc: sqlite3.Error) -> StateError:
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return StateError(f"{self.path} is busy: another process held it for {BUSY_TIMEOUT:g} s")
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return StateError(f"{self.path} is corrupt ({_one_line(exc)}); restore it from a backup")
        return StateError(f"cannot use {self.path}: {_one_line(exc)}")

    @contextlib.contextmanager
    def _connection(self, *, create: bool) -> Iterator[sqlite3.Connection | None]:
        if not self.exists():
            if not create:
                yield None
                return
            try:
                self._create()
            except OSError as exc:
                raise StateError(f"cannot create {self.path}: {_one_line(exc)}") from None
        try:
            conn = self._open()
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            yield conn
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError):
                raise  # a bug here, not a state problem
            raise self._error(exc) from None
        finally:
            conn.close()

    @contextlib.contextmanager
    def read(self, legacy: Legacy | None = None) -> Iterator[sqlite3.Connection | None]:
        """A connection to read from, for one operation.

        Args:
            legacy: the store's former JSON file, imported first if it exists.

        Yields:
            The connection, or None when there is no database yet (the store
            is empty; nothing is created by reading).

        Raises:
            StateError: the database (or the legacy file) is corrupt,
                unreadable, or busy beyond the timeout.
        """
        if legacy is not None:
            self.migrate(legacy)
        with self._connection(create=False) as conn:
            yield conn

    @contextlib.contextmanager
    def write(self, legacy: Legacy | None = None) -> Iterator[sqlite3.Connection]:
        """A connection in a write transaction (``BEGIN IMMEDIATE``), committed at the end of the block.

        The commit is durable (``synchronous=FULL``) before the block's
        caller proceeds; an exception in the block rolls everything back.

        Args:
            legacy: the store's former JSON file, imported first if it exists.

        Yields:
            The connection, inside its transaction.

        Raises:
            StateError: the database (or the legacy file) is corrupt,
                unwritable, or busy beyond the timeout.
        """
        if legacy is not None:
            self.migrate(legacy)
        with self._connection(create=True) as conn:
            assert conn is not None  # created above
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- migration from the JSON files ----------------------------------------------------------
    def migrate(self, legacy: Legacy) -> int:
        """Import a store's former JSON file, once, then delete it.

        Args:
            legacy: the file and how to parse and load it.

        Returns:
            How many entries were imported (0 when there was no file, or
            when an earlier run had imported this very content already).

        Raises:
            StateError: the file is corrupt (nothing is imported, the file
                stays), or the database is.

        Warning:
            The JSON file is deleted, not kept beside the database: it holds
            what pruning exists to forget (case references, the probes of
            blind queries), and once the import is committed it is a copy.
        """
        try:
            with open(legacy.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StateError(f"cannot read {legacy.path}: {_one_line(exc)}") from None
        digest = hashlib.sha256(raw).hexdigest()
        done = False
        with self._connection(create=False) as conn:
            if conn is not None:
                done = _is_migrated(conn, legacy.name, digest)
        count = 0
        if not done:
            entries = legacy.parse(raw)
            with self.write() as conn:
                # Checked again under the write lock: another process may
                # have imported the same file since.
                if not _is_migrated(conn, legacy.name, digest):
                    count = legacy.load(conn, entries)
                    conn.execute("INSERT INTO migrated (name, sha256, entries, at) VALUES (?, ?, ?, ?)",
                                 (legacy.name, digest, count, int(time.time())))
        self._drop_legacy(legacy.path, digest)
        return count

    def _drop_legacy(self, path: str, digest: str) -> None:
        """Delete an imported JSON file, unless it changed since (then the next operation imports that)."""
        try:
            with open(path, "rb") as fh:
                if hashlib.sha256(fh.read()).hexdigest() != digest:
                    return
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(f"cannot remove the imported {path}: {_one_line(exc)}") from None
        _fsync_dir(os.path.dirname(path))


def _is_migrated(conn: sqlite3.Connection, name: str, digest: str) -> bool:
    row = conn.execute("SELECT 1 FROM migrated WHERE name = ? AND sha256 = ?", (name, digest)).fetchone()
    return row is not None


def _configure(conn: sqlite3.Connection) -> None:
    """Set the pragmas every connection uses."""
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch to write-ahead logging (journal mode {mode})")
    # FULL, not NORMAL: with WAL, NORMAL does not fsync at each commit, so a
    # commit survives a killed process (the SIGKILL tests in
    # tests/node/test_crash_safety.py and test_peer_killed_mid_query_then_restarted
    # would pass with it) but may be lost with the machine's power. The JSON
    # files were fsynced before a caller went on, and a lost replay-cache
    # entry is a replay accepted twice: every commit is on disk when the
    # caller proceeds, at one fsync of the log per transaction.
    conn.execute("PRAGMA synchronous=FULL")
    # Pruned rows hold case references, and an outbox record's old version a
    # blind probe: overwrite them rather than leave them in free pages.
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
