"""The async engine and transactions, on SQLite (aiosqlite) or PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import orjson
import structlog
from sqlalchemy import event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.sql.dml import Insert

from stitcher.store import audit, pg_driver

T = TypeVar("T")
ATTEMPTS = 5
log = structlog.get_logger("db")
# what the database says when two transactions collide rather than when a statement is wrong: retried
_CONTENTION = ("deadlock detected", "could not serialize access", "database is locked", "database table is locked")


_LOCK_KEYS = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:ks AS bigint[])) AS k")


class Contention(Exception):
    """Deadlocks, serialization failures or a locked SQLite database that outlived their retries: the HTTP
    edge answers 503 with Retry-After (never 500), and the caller's retry of the same request is safe."""


def is_contention(exc: BaseException) -> bool:
    """Whether ``exc`` is a collision with another transaction, worth running the transaction again for."""
    if isinstance(exc, Contention):
        return True
    text_ = str(getattr(exc, "orig", None) or exc).lower()
    return any(marker in text_ for marker in _CONTENTION)


# SQLSTATE classes meaning the server is unreachable, restarting or out of resources, not that a statement
# is wrong: 08 connection exception, 57 operator intervention (admin shutdown, crash, "cannot connect now"),
# 53 insufficient resources (too many connections)
_OUTAGE_CLASSES = ("08", "57", "53")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is down, restarting or dropped the connection (a 503 and a later
    retry, never a 500): the driver's connection errors arrive wrapped in a generic ``DBAPIError``, so the
    chain of causes is read (its SQLSTATE, a socket error, the driver's own broken-connection error)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        # OSError: a refused connection, a missing unix socket, a timeout (TimeoutError is one)
        if isinstance(seen, OperationalError | InterfaceError | OSError | PoolTimeout):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, asyncpg.exceptions.InternalClientError):
            return True  # the driver's own state after a connection died mid-statement
        if str(getattr(seen, "sqlstate", "") or "")[:2] in _OUTAGE_CLASSES:
            return True
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return False


class _MatchesOutages(type):
    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, BaseException) and is_outage(instance)


class SqlOutage(Exception, metaclass=_MatchesOutages):
    """Never raised: ``isinstance(exc, SqlOutage)`` is ``is_outage(exc)``, so the HTTP edge's tuple of
    unavailability errors (answered 503 + Retry-After) holds it beside the plain classes."""


def lock_id(key: str) -> int:
    """The advisory lock id (a signed 64-bit int) of an identity key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def make_engine(url: str) -> AsyncEngine:
    """An engine tuned per dialect: SQLite in WAL mode with a busy timeout and foreign keys on."""
    # hide_parameters: an error's text must not carry emails, phones or tokens into the logs (invariant 10)
    json: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads,
                            "hide_parameters": True}
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 10}, **json)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=10000"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        return engine
    # no pool_pre_ping: with asyncpg it costs three round trips per checkout; a dead connection fails the
    # transaction, which the caller sees as a 503 and retries
    # bounded waits: an unreachable or stuck server becomes a 503 in seconds, not a hang
    # pool_size covers the requests one process has in flight: a connection past it is closed when returned,
    # so a steady load above it would open one per request (a server process, type introspection, and the
    # prepared statements of the connection lost)
    return create_async_engine(url, pool_size=20, max_overflow=10, pool_timeout=5,
                               connect_args={"timeout": 5, "command_timeout": 30}, **json)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class Database:
    """Sessions and write transactions.

    SQLite has one writer at a time and upgrades read locks badly under concurrency, so write transactions of
    this process queue on a lock there; PostgreSQL instead serialises requests about the same person with
    advisory locks (``lock_keys``) and lets everything else run in parallel.
    """

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self._inserts: dict[tuple[Any, tuple[str, ...]], Insert] = {}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed on success and rolled back on error; the identity-log rows
        it recorded (``audit.record``) are inserted, in one statement, just before the commit."""
        # the session begins by itself with its first statement (no greenlet round of its own for a begin);
        # leaving it without the commit (an error) rolls back
        if self._write_lock is None:
            async with self.sessions() as session:
                yield session
                await audit.write(self, session)
                await session.commit()
            return
        async with self._write_lock, self.sessions() as session:
            yield session
            await audit.write(self, session)
            await session.commit()

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def lock_keys(self, session: AsyncSession, keys: Iterable[str]) -> None:
        """Transaction-scoped advisory locks on identity keys (PostgreSQL; SQLite has its one writer).

        THE LOCK ORDER, for every writer that touches a person (contact API, merge, erase, stitch, worker;
        later import, events, orders):
          1. identity keys — ``ext:<id>``, ``id:<contactId>``, ``<kind>:<value>`` of channels and
             ``vid:<visitor>`` — all of a transaction's keys in ONE call, which takes them sorted;
          2. then contact rows, ``SELECT … FOR UPDATE`` of all of them in one statement ordered by id;
          3. then any other row (an insert referencing a contact takes a KEY SHARE lock on its row).
        Never a key after a row, and never a second batch of keys: a writer that learns of more keys after
        locking (a merge loser's visitors, an erased person's identifiers) rolls back and runs again with
        them in its first batch. A deadlock that slips through anyway is retried by ``retry`` and, past its
        attempts, answered 503 (``Contention``).
        """
        if self.dialect != "postgresql":
            return
        digests = [lock_id(k) for k in sorted(set(keys))]
        if digests:  # one round trip; unnest keeps the array's order, so the locks are taken in that order
            conn = await pg_driver.driver(session)
            assert conn is not None
            await conn.execute(_LOCK_KEYS, {"ks": digests})

    async def retry(self, work: Callable[[], Awaitable[T]], *, also: tuple[type[BaseException], ...] = (),
                    attempts: int = ATTEMPTS) -> T:
        """Run ``work`` (which opens its own transaction) again after a collision with another transaction,
        or after one of ``also``, with a short random back-off.

        A collision that outlives the attempts raises ``Contention`` (503); an ``also`` error is re-raised
        as it is, for the caller to translate.
        """
        for attempt in range(1, attempts + 1):
            try:
                return await work()
            except Exception as exc:
                contention = is_contention(exc)
                if not (contention or isinstance(exc, also)):
                    raise
                if attempt == attempts:
                    if contention:
                        raise Contention(str(exc)) from exc
                    raise
                log.info("transaction collided, retrying", attempt=attempt, error=type(exc).__name__)
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    def insert_ignore(self, table: Any, index_elements: Sequence[str]) -> Insert:
        """``INSERT ... ON CONFLICT (index_elements) DO NOTHING`` for this dialect; pass rows at execute."""
        key = (getattr(table, "__table__", table), tuple(index_elements))
        if (statement := self._inserts.get(key)) is None:  # built once: a call only binds its rows
            dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            # on the Table, not the model class: Core executemany, without the ORM's per-row bulk machinery
            statement = self._inserts[key] = dialect_insert(key[0]).on_conflict_do_nothing(
                index_elements=list(index_elements))
        return statement

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    async def close(self) -> None:
        await self.engine.dispose()
