"""Dead letters in a JetStream KV bucket of a NATS store's namespace.

Usage::

    async with open_nats(url) as connection:
        async with open_nats_store(connection, codec, namespace="eskit") as store:
            dead_letters = nats_dead_letters(connection, store.namespace)

Layout: the bucket ``<namespace>_dead_letters`` (the stream ``KV_<namespace>_dead_letters``,
laid out like every eskit KV bucket so that ``nats kv`` can show it; see
:mod:`engine.stores.nats_kv`) holds one JSON document per letter under the key
``<runner token>.<position>``. The runner token is the runner name's UTF-8 bytes in
base64url without padding (``=`` for the empty name; a name whose token would be longer
than :data:`MAX_TOKEN_LENGTH` gets ``=`` and the base64url of its SHA-256 instead), so
any name is one valid subject token and a runner's letters are one subject filter
(``$KV.<bucket>.<token>.*``) away. The document keeps the runner name verbatim, which is
what a listing returns and checks.

* **park** publishes the document on the key's subject; the bucket keeps one message per
  subject, so parking the same ``(runner, position)`` again replaces it.
* **dead_letters** reads the bucket (or one runner's filter) with batched direct gets,
  one request per page, and sorts by runner (code point order) and position.
* **discard** purges the key's subject with the stream purge API, which answers how
  many messages it removed: the check and the removal are one step, and no tombstone
  is left behind.

The bucket is created on first use. JetStream API errors are translated in
:func:`_translate` (into :class:`~engine.errors.BackendRefusedError`); the driver's
:class:`~engine.errors.OutcomeUnknownError` and
:class:`~engine.errors.BackendUnavailableError` pass through as they do from the other
NATS adapters (the backend error policy, docs/runtime.md). What is kept of a letter is shared
by every durable backend: see :mod:`engine.stores.dead_letter_encoding`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, TypeVar

import attrs
import trio

from engine.drivers.nats import NatsConnection
from engine.drivers.nats_jetstream import JetStreamApiError, OutMsg
from engine.drivers.nats_vocabulary import (
    MAX_TOKEN_LENGTH,
    bounded_subject_token,
    check_namespace,
    is_kv_tombstone,
    kv_bucket_config,
    kv_stream,
)
from engine.errors import BackendRefusedError
from engine.stores.base import DeadLetter
from engine.stores.dead_letter_encoding import (
    check_runner,
    letter_from_json,
    letter_to_json,
    storable_letter,
)

__all__ = [
    "MAX_TOKEN_LENGTH",
    "NatsDeadLetterStore",
    "delete_nats_dead_letters",
    "nats_dead_letters",
]

T = TypeVar("T")

#: Runner tokens longer than this are replaced by a digest.
#: Messages per direct-get request while listing.
LIST_PAGE: Final = 1000


def _bucket(namespace: str) -> str:
    return f"{check_namespace(namespace)}_dead_letters"


def _translate(exc: JetStreamApiError) -> BackendRefusedError:
    """The one place JetStream errors of the dead-letter bucket become engine errors."""
    return BackendRefusedError("nats", f"the NATS dead-letter bucket refused a request: {exc}")


@attrs.define(eq=False)
class NatsDeadLetterStore:
    """A :class:`~engine.stores.base.DeadLetterStore` in a JetStream KV bucket.

    Get one from :func:`nats_dead_letters`; it uses the connection it is given, so it
    lives as long as that connection is open.
    """

    _connection: NatsConnection
    bucket: str
    replicas: int = 1
    _ready: bool = attrs.field(default=False, init=False)
    _creating: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    @property
    def stream(self) -> str:
        """The JetStream stream behind the bucket."""
        return kv_stream(self.bucket)

    def subject(self, runner: str, position: int) -> str:
        """The subject of one letter's key."""
        return f"$KV.{self.bucket}.{bounded_subject_token(runner)}.{position}"

    async def park(self, letter: DeadLetter) -> None:
        """Record ``letter``, replacing the one of the same ``(runner, position)``.

        Raises:
            ValueError: A name holds NUL or an unpaired surrogate, or ``parked_at`` is
                naive (see :mod:`engine.stores.dead_letter_encoding`).
            BackendRefusedError: JetStream refused the write.
        """
        kept = storable_letter(letter)
        message = OutMsg(self.subject(kept.runner, int(kept.position)), letter_to_json(kept))
        await self._call(partial(self._connection.publish, message))

    async def dead_letters(self, runner: str | None = None) -> list[DeadLetter]:
        """The parked events (of ``runner``, or of all runners), by runner and position."""
        if runner is None:
            subject = f"$KV.{self.bucket}.>"
        else:
            check_runner(runner)
            subject = f"$KV.{self.bucket}.{bounded_subject_token(runner)}.*"
        letters: list[DeadLetter] = []
        start = 1
        while True:
            batch = await self._call(
                partial(
                    self._connection.direct_get_batch,
                    self.stream,
                    start=start,
                    batch=LIST_PAGE,
                    subject=subject,
                )
            )
            if not batch.data:
                break
            assert batch.headers is not None
            for data, headers in zip(batch.data, batch.headers, strict=True):
                if is_kv_tombstone(headers):
                    continue  # deleted with ``nats kv`` by an operator
                letter = letter_from_json(data)
                if runner is None or letter.runner == runner:
                    letters.append(letter)
            if not batch.num_pending:
                break
            start = batch.last_sequence + 1
        letters.sort(key=lambda letter: (letter.runner, letter.position))
        return letters

    async def discard(self, runner: str, position: int) -> bool:
        """Forget one parked event; ``False`` if there was none at that key."""
        check_runner(runner)
        subject = self.subject(runner, int(position))
        reply = await self._call(
            partial(
                self._connection.api, f"$JS.API.STREAM.PURGE.{self.stream}", {"filter": subject}
            )
        )
        return int(reply.get("purged", 0)) > 0

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T:
        try:
            await self._ensure_bucket()
            return await request()
        except JetStreamApiError as exc:
            raise _translate(exc) from exc

    async def _ensure_bucket(self) -> None:
        if self._ready:
            return
        async with self._creating:
            if not self._ready:
                await self._create_bucket()
                self._ready = True

    async def _create_bucket(self) -> None:
        await self._connection.ensure_stream(kv_bucket_config(self.bucket, self.replicas))


def nats_dead_letters(
    connection: NatsConnection, namespace: str, *, replicas: int = 1
) -> NatsDeadLetterStore:
    """The dead-letter store of ``namespace`` (its bucket is created on first use).

    Args:
        connection: The NATS connection to use (the store's, usually).
        namespace: The store's namespace; the bucket is ``<namespace>_dead_letters``.
        replicas: JetStream replicas of the bucket (when creating it).

    Raises:
        ValueError: The namespace is not a valid name.
    """
    return NatsDeadLetterStore(connection, _bucket(namespace), replicas)


async def delete_nats_dead_letters(connection: NatsConnection, namespace: str) -> None:
    """Delete the dead-letter bucket of ``namespace`` (every letter in it)."""
    try:
        await connection.delete_stream(kv_stream(_bucket(namespace)))
    except JetStreamApiError as exc:
        raise _translate(exc) from exc
