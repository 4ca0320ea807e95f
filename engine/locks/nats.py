"""A lock registry in a JetStream KV bucket with per-key TTL (tiers 2/3 with NATS).

Layout: the bucket ``<namespace>_locks`` is the stream ``KV_<namespace>_locks`` (one
message per key, per-message TTL allowed), laid out like any NATS KV bucket so that
``nats kv`` can show it. A key's subject is ``$KV.<bucket>.<token>``, where the token is
the key's UTF-8 bytes in base64url without padding (``=`` for the empty key, and ``=``
plus a SHA-256 digest for keys too long for a subject): ``a.*`` or ``>`` never act as
wildcards. The value names the owner, the key and a per-hold nonce.

* **Acquire** = KV create: publish with ``Nats-Expected-Last-Subject-Sequence`` set to
  0 (or to the sequence of the key's delete marker), and ``Nats-TTL``. The server
  refuses it if somebody holds the key. The **fencing token** is the revision of that
  create (its stream sequence): later holders always get larger ones.
* **Renew** every ``ttl / 3`` by compare-and-set on the last revision (a new TTL each
  time). The lease counts as lost when the compare-and-set fails (the key expired or
  changed hands) or when no renewal got through before ``renewed_at + 0.9 * ttl`` on
  this node's clock, measured from when the last successful renewal was *sent*, so this
  node gives up before the server can let anybody else in. Then the holder's block is
  cancelled and raises :class:`~engine.errors.LockNotHeldError`.
* **Release** = delete with the last revision (a ``KV-Operation: DEL`` marker, itself
  expiring after ``ttl``).
* **Waiting** acquirers subscribe to the key's subject: a delete wakes them at once; a
  renewal tells them the holder is alive and moves their estimate of its expiry; when
  that estimate passes they read the key again (and back off briefly if the server has
  not expired it yet). A holder that dies is replaced about ``ttl`` after its last
  renewal.

The server's TTL has a one-second minimum, so ``ttl`` must be at least 1 s. A process
that is paused (``SIGSTOP``, a long GC, a VM migration) past its TTL notices the loss
when it runs again, but a write it makes before that is not stopped by the registry:
fence writes with the token, a compare-and-set checkpoint or an expected version.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import orjson
import trio

from engine.drivers.nats import NatsConnection, Subscription, open_nats
from engine.drivers.nats_jetstream import JetStreamApiError, OutMsg, StoredMsg
from engine.drivers.nats_vocabulary import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    KV_OPERATION,
    ApiError,
    check_namespace,
    is_kv_tombstone,
    kv_bucket_config,
    kv_stream,
)
from engine.drivers.nats_vocabulary import bounded_subject_token as lock_subject_token
from engine.errors import BackendRefusedError, LockNotHeldError
from engine.groups import unwrap_lone_errors
from engine.locks.base import Lease

__all__ = [
    "DEFAULT_LOCK_NAMESPACE",
    "DEFAULT_LOCK_TTL",
    "MIN_LOCK_TTL",
    "NATSLockRegistry",
    "NATSLockStatistics",
    "delete_nats_lock_bucket",
    "ensure_nats_lock_bucket",
    "lock_subject_token",
    "open_nats_lock_registry",
]

logger = logging.getLogger("eskit.locks")

DEFAULT_LOCK_NAMESPACE = "eskit"
#: Seconds a lease lives without renewal.
DEFAULT_LOCK_TTL = 10.0
#: The server's smallest per-message TTL.
MIN_LOCK_TTL = 1.0
#: Renew after this fraction of the TTL.
RENEW_FRACTION = 1 / 3
#: Count the lease lost after this fraction of the TTL without a successful renewal.
LOSS_FRACTION = 0.9
#: Subject tokens longer than this are replaced by a digest.

_TTL = "Nats-TTL"
_MARKER = "Nats-Marker-Reason"
#: First pause of a waiter whose estimate passed while the key is still there, and of a
#: renewal that failed for a network reason; both double.
_FIRST_BACKOFF = 0.02
#: Seconds a release may take before it is left to the TTL.
_RELEASE_GRACE = 5.0


def _ttl_header(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _parse_ttl(headers: Any, default: float) -> float:
    value = str(headers.get(_TTL, "")) if headers else ""
    try:
        if value.endswith("ms"):
            return float(value[:-2]) / 1000
        if value.endswith("s"):
            return float(value[:-1])
        return float(value)
    except ValueError:
        return default


def _is_tombstone(headers: Any) -> bool:
    return is_kv_tombstone(headers) or (bool(headers) and _MARKER in headers)


def _printable(text: str) -> str:
    """``text`` as valid UTF-8 (unpaired surrogates replaced), for display only."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _translate(exc: JetStreamApiError) -> BackendRefusedError:
    """The one place JetStream errors of the lock bucket become engine errors."""
    return BackendRefusedError("nats", f"the NATS lock bucket refused a request: {exc}")


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _bucket(namespace: str) -> str:
    return f"{check_namespace(namespace)}_locks"


async def ensure_nats_lock_bucket(
    connection: NatsConnection, namespace: str = DEFAULT_LOCK_NAMESPACE, *, replicas: int = 1
) -> None:
    """Create the lock bucket of ``namespace`` (or update it to allow per-key TTLs)."""
    await connection.ensure_stream(
        kv_bucket_config(_bucket(namespace), replicas, per_message_ttl=True)
    )


async def delete_nats_lock_bucket(connection: NatsConnection, namespace: str) -> None:
    """Delete the lock bucket of ``namespace`` (every lease in it ends)."""
    await connection.delete_stream(kv_stream(_bucket(namespace)))


@attrs.frozen
class NATSLockStatistics:
    """Counters of a :class:`NATSLockRegistry`.

    Attributes:
        held: Leases held now.
        acquired: Leases acquired since the registry opened.
        lost: Leases lost while held.
        renewals: Successful renewals.
        renewal_retries: Renewals that failed for a network reason and were tried again.
    """

    held: int
    acquired: int
    lost: int
    renewals: int
    renewal_retries: int


@attrs.define(eq=False)
class _Held:
    lease: Lease
    subject: str
    value: bytes
    revision: int
    renewed_at: float  # Trio clock: when the last successful write was sent
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    keeper: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    lost: bool = False
    releasing: bool = False


@attrs.define(eq=False)
class NATSLockRegistry:
    """A :class:`~engine.locks.base.LockRegistry` in a JetStream KV bucket.

    Get one from :func:`open_nats_lock_registry`; see the module documentation for how
    acquiring, renewing, losing and waiting work. Renewals run in the registry's own
    nursery, so a holder's block contains no task of the registry and its exceptions
    pass through unchanged.
    """

    _connection: NatsConnection
    _bucket: str
    owner_id: str
    ttl: float
    _nursery: trio.Nursery
    _holders: dict[int, _Held] = attrs.field(factory=dict, init=False)
    _counts: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)

    @property
    def stream(self) -> str:
        """The JetStream stream behind the bucket."""
        return kv_stream(self._bucket)

    def subject(self, key: str) -> str:
        """The KV subject of ``key``."""
        return f"$KV.{self._bucket}.{lock_subject_token(key)}"

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[Lease]:
        """See :meth:`LockRegistry.hold <engine.locks.base.LockRegistry.hold>`.

        Waits through NATS outages. Raises :class:`~engine.errors.BackendRefusedError` if the
        server refuses the bucket's requests (the bucket was deleted, for example).
        """
        try:
            held = await self._acquire(key)
        except JetStreamApiError as exc:
            raise _translate(exc) from exc
        self._holders[id(held)] = held
        self._counts["acquired"] += 1
        try:
            self._nursery.start_soon(self._keep, held)
            with held.scope:
                yield held.lease
        finally:
            held.releasing = True
            held.keeper.cancel()
            del self._holders[id(held)]
            with trio.move_on_after(_RELEASE_GRACE, shield=True):
                await self._release(held)
        if held.lost:
            raise LockNotHeldError(f"the lease on {key!r} was lost while it was held")

    async def owner(self, key: str) -> str | None:
        """See :meth:`LockRegistry.owner <engine.locks.base.LockRegistry.owner>`.

        Raises:
            OutcomeUnknownError, BackendUnavailableError: NATS did not answer.
            BackendRefusedError: The server refused the request.
        """
        try:
            entry = await self._read(self.subject(key))
        except JetStreamApiError as exc:
            raise _translate(exc) from exc
        if entry is None or _is_tombstone(entry.headers):
            return None
        return str(orjson.loads(entry.data)["owner"])

    def statistics(self) -> NATSLockStatistics:
        """A snapshot of the registry's counters."""
        counts = self._counts
        return NATSLockStatistics(
            held=len(self._holders),
            acquired=counts["acquired"],
            lost=counts["lost"],
            renewals=counts["renewals"],
            renewal_retries=counts["renewal_retries"],
        )

    # -- acquiring -------------------------------------------------------------------

    async def _read(self, subject: str) -> StoredMsg | None:
        return await self._connection.direct_get_last(self.stream, subject)

    async def _create(self, subject: str, value: bytes, expected: int) -> tuple[int, float] | None:
        """KV create; the new revision and when it was sent, or ``None`` if taken.

        If the create fails in any other way (a timeout, a cancellation), it may still
        have reached the server: a key nobody would renew then blocks others for a
        whole TTL, so it is deleted again if it is there and ours (shielded, bounded).
        """
        sent = trio.current_time()
        headers = {EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected), _TTL: _ttl_header(self.ttl)}
        settled = False
        try:
            ack = await self._connection.publish(OutMsg(subject, value, headers))
            settled = True
        except JetStreamApiError as exc:
            if exc.err_code != ApiError.WRONG_LAST_SEQUENCE:
                raise
            settled = True
            return None
        finally:
            if not settled:
                with trio.move_on_after(_RELEASE_GRACE, shield=True):
                    await self._delete_if_ours(subject, value)
        return ack.sequence, sent

    async def _delete_if_ours(self, subject: str, value: bytes) -> None:
        try:
            entry = await self._read(subject)
            if entry is not None and entry.data == value:
                await self._connection.publish(
                    OutMsg(subject, b"", self._delete_headers(entry.sequence))
                )
        except (JetStreamApiError, TimeoutError, ConnectionError, trio.ClosedResourceError) as exc:
            logger.info(
                "could not withdraw an unsure create of %s (its TTL ends it): %s", subject, exc
            )

    def _delete_headers(self, revision: int) -> dict[str, str]:
        return {
            KV_OPERATION: "DEL",
            EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision),
            _TTL: _ttl_header(self.ttl),
        }

    async def _acquire(self, key: str) -> _Held:
        subject = self.subject(key)
        value = orjson.dumps(
            {"owner": _printable(self.owner_id), "key": _printable(key), "nonce": uuid.uuid4().hex}
        )
        expires_at: float | None = None  # when the current holder's lease may end
        backoff = _FIRST_BACKOFF
        outage = _FIRST_BACKOFF
        async with AsyncExitStack() as stack:
            watch = None
            while True:
                try:
                    entry = await self._read(subject)
                    if entry is None or _is_tombstone(entry.headers):
                        expected = 0 if entry is None else entry.sequence
                        created = await self._create(subject, value, expected)
                        if created is not None:
                            revision, sent = created
                            lease = Lease(key, self.owner_id, revision)
                            return _Held(lease, subject, value, revision, sent)
                        continue  # somebody else was faster: look again
                    if watch is None:
                        watch = await stack.enter_async_context(
                            self._connection.subscribe(subject, buffer_size=16)
                        )
                        continue  # a release between the read and the subscription
                except (TimeoutError, ConnectionError) as exc:
                    # Waiting for a lock includes waiting for the server to come back.
                    logger.warning("waiting for %r: NATS unavailable (%s)", key, exc)
                    await trio.sleep(outage)
                    outage = min(outage * 2, self.ttl)
                    continue
                outage = _FIRST_BACKOFF
                now = trio.current_time()
                if expires_at is None:
                    expires_at = now + _parse_ttl(entry.headers, self.ttl)
                elif expires_at <= now:
                    # Still there after its estimated end: the server expires a little
                    # late, or a renewal went by unseen (a reconnect).
                    expires_at = now + backoff
                    backoff = min(backoff * 2, self.ttl / 4)
                expires_at, backoff = await self._wait_for_change(watch, expires_at, backoff)

    async def _wait_for_change(
        self, watch: Subscription, expires_at: float, backoff: float
    ) -> tuple[float, float]:
        """Wait until the key is deleted or its holder's lease may have ended.

        Returns:
            The new estimate of the holder's end, and the backoff to use next.
        """
        with trio.CancelScope(deadline=expires_at) as waiting:
            async for msg in watch.messages:
                if _is_tombstone(msg.headers):
                    break
                # A renewal or a new holder's create: alive for another TTL.
                expires_at = trio.current_time() + _parse_ttl(msg.headers, self.ttl)
                waiting.deadline = expires_at
                backoff = _FIRST_BACKOFF
        return expires_at, backoff

    # -- holding ---------------------------------------------------------------------

    async def _keep(self, held: _Held) -> None:
        """Renew ``held`` every ``ttl / 3`` until it is released or lost."""
        try:
            with held.keeper:
                while await self._renew(held):
                    pass
        finally:
            if not held.releasing:
                # The registry is closing under a holder: nobody renews any more.
                self._lose(held, "the registry closed")

    async def _renew(self, held: _Held) -> bool:
        """One renewal (retried until the lease's local deadline); ``False`` once lost."""
        await trio.sleep_until(held.renewed_at + self.ttl * RENEW_FRACTION)
        deadline = held.renewed_at + self.ttl * LOSS_FRACTION
        headers = {_TTL: _ttl_header(self.ttl)}
        backoff = _FIRST_BACKOFF
        with trio.move_on_at(deadline):
            while True:
                sent = trio.current_time()
                headers[EXPECTED_LAST_SUBJECT_SEQUENCE] = str(held.revision)
                try:
                    ack = await self._connection.publish(OutMsg(held.subject, held.value, headers))
                except JetStreamApiError as exc:
                    if exc.err_code == ApiError.WRONG_LAST_SEQUENCE:
                        self._lose(held, "the key expired or changed hands")
                        return False
                    logger.warning("renewing %r failed: %s", held.lease.key, exc)
                except (TimeoutError, ConnectionError, trio.ClosedResourceError) as exc:
                    logger.info("renewing %r failed, retrying: %s", held.lease.key, exc)
                else:
                    held.revision = ack.sequence
                    held.renewed_at = sent
                    self._counts["renewals"] += 1
                    return True
                self._counts["renewal_retries"] += 1
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.ttl / 10)
        self._lose(held, f"no renewal got through within {self.ttl * LOSS_FRACTION:g} s")
        return False

    def _lose(self, held: _Held, reason: str) -> None:
        if held.lost:
            return
        held.lost = True
        held.scope.cancel()
        self._counts["lost"] += 1
        logger.warning("lost the lease on %r: %s", held.lease.key, reason)

    async def _release(self, held: _Held) -> None:
        """Delete the key if it is still ours (a renewal cut short may have moved it)."""
        if held.lost:
            await trio.lowlevel.checkpoint()
            return
        revision = held.revision
        for _ in range(3):
            try:
                try:
                    await self._connection.publish(
                        OutMsg(held.subject, b"", self._delete_headers(revision))
                    )
                    return
                except JetStreamApiError as exc:
                    if exc.err_code != ApiError.WRONG_LAST_SEQUENCE:
                        logger.warning("releasing %r failed: %s", held.lease.key, exc)
                        return
                entry = await self._read(held.subject)
            except (TimeoutError, ConnectionError, trio.ClosedResourceError) as exc:
                logger.warning("releasing %r failed (its TTL ends it): %s", held.lease.key, exc)
                return
            if entry is None or _is_tombstone(entry.headers) or entry.data != held.value:
                self._lose(held, "the key changed hands before it was released")
                return
            revision = entry.sequence  # our own renewal, cut short, got through


@unwrap_lone_errors
@asynccontextmanager
async def open_nats_lock_registry(
    url_or_connection: str | NatsConnection,
    *,
    namespace: str = DEFAULT_LOCK_NAMESPACE,
    owner_id: str | None = None,
    ttl: float = DEFAULT_LOCK_TTL,
    replicas: int = 1,
    **connect_options: Any,
) -> AsyncIterator[NATSLockRegistry]:
    """Open a lock registry in the KV bucket ``<namespace>_locks`` (created if missing).

    Args:
        url_or_connection: A NATS URL (the registry opens and closes its own
            connection) or an open :class:`~engine.drivers.nats.NatsConnection`.
        namespace: Names the bucket; registries of one namespace share their locks.
        owner_id: This node's name, reported by :meth:`NATSLockRegistry.owner` (by
            default ``host:pid``).
        ttl: Seconds a lease outlives its holder's last renewal (at least 1).
        replicas: JetStream replicas of the bucket (when creating it).
        **connect_options: Passed to :func:`~engine.drivers.nats.open_nats` with a URL.

    Raises:
        ValueError: ``ttl`` is below :data:`MIN_LOCK_TTL`, or the namespace is invalid.

    Resource handling:
        Owns a nursery with one renewal task per held lease. Leases still held when the
        registry closes are lost (their holders are cancelled); the TTL ends them at
        the server.
    """
    if ttl < MIN_LOCK_TTL:
        raise ValueError(f"ttl must be at least {MIN_LOCK_TTL} s (the server's minimum)")
    bucket = _bucket(namespace)
    async with AsyncExitStack() as stack:
        if isinstance(url_or_connection, str):
            connection = await stack.enter_async_context(
                open_nats(url_or_connection, **connect_options)
            )
        else:
            connection = url_or_connection
        await ensure_nats_lock_bucket(connection, namespace, replicas=replicas)
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        yield NATSLockRegistry(connection, bucket, owner_id or _default_owner(), ttl, nursery)
