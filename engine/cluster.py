"""Cluster command routing: a command runs on the node that owns its stream.

In a cluster every node takes commands, but the commands of one stream are best handled
on one node: there they run one at a time, on a warm state cache, without conflicting.
A node **owns** a stream while it holds the stream's lease in the shared lock registry
(NATS KV or PostgreSQL); it keeps the lease for :attr:`ClusterRouter.idle_release`
seconds after the stream's last command, so a burst of commands stays on one node, then
lets it go.

:meth:`ClusterRouter.send` decides where a command runs:

* this node owns the stream: here, one command of the stream at a time;
* another node owns it: forwarded over NATS request/reply to ``<namespace>.cmd.<node>``,
  handled there, and its reply (the same JSON as a local result, or the same error)
  returned as it is;
* nobody owns it: this node takes the lease and handles it;
* the owner is gone (no responder on its subject, e.g. killed before its lease ran
  out), or the registry cannot be asked: here, without the lease, and this node starts
  waiting for the lease in the background.

Routing is an optimisation, never the correctness mechanism: whoever handles a command
appends with the expected version it loaded, so two nodes that both think they own a
stream only cost a conflict and a retry. The one thing routing adds is an unknown
outcome: a forwarded command whose reply does not come back in
:attr:`ClusterRouter.forward_timeout` may or may not have been handled. That surfaces as
:class:`UnknownOutcomeError` carrying the command id (one is generated when the caller
gave none); sending the command again with that id is safe, because the handler answers
a repeated command id with the original result (idempotency by command id).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import trio

from engine.drivers.nats import InMsg, NatsConnection, NoRespondersError, StoredMsg
from engine.errors import EskitError, LockNotHeldError, error_codes
from engine.groups import unwrap_lone_errors
from engine.locks.base import LockRegistry

__all__ = [
    "DEFAULT_FORWARD_TIMEOUT",
    "DEFAULT_IDLE_RELEASE",
    "DEFAULT_TAKE_TIMEOUT",
    "ClusterRouter",
    "ClusterStatistics",
    "CommandRequest",
    "RemoteCommandError",
    "UnknownOutcomeError",
    "open_cluster_router",
    "stream_lease_key",
]

logger = logging.getLogger("eskit.cluster")

#: Seconds a forwarded command may take before its outcome is reported unknown.
DEFAULT_FORWARD_TIMEOUT = 5.0
#: Seconds a node keeps a stream's lease after the stream's last command.
DEFAULT_IDLE_RELEASE = 10.0
#: Seconds a node waits to take the lease of a stream nobody owned.
DEFAULT_TAKE_TIMEOUT = 1.0
#: Forwarded commands one node handles at once (more wait in the subscription buffer).
MAX_SERVING = 256


class UnknownOutcomeError(EskitError, TimeoutError):
    """A forwarded command got no reply in time: it may or may not have been handled.

    Send it again with the same ``command_id``: a command id that was handled returns
    the original result (``duplicate: true``) instead of acting twice.

    Attributes:
        command_id: The id to retry with (generated when the caller gave none).
        stream_id: The command's stream.
        node: The node it was forwarded to.
    """

    code = "unknown_outcome"

    def __init__(self, command_id: str, stream_id: str, node: str) -> None:
        super().__init__(command_id, stream_id, node)
        self.command_id = command_id
        self.stream_id = stream_id
        self.node = node

    def __str__(self) -> str:
        return (
            f"the command {self.command_id!r} for stream {self.stream_id!r} was forwarded to "
            f"node {self.node!r} and no reply came back in time: it may or may not have been "
            f"handled; send it again with the same command_id"
        )


class RemoteCommandError(EskitError):
    """The node that handled a forwarded command refused it or failed.

    It carries the owner's codes, never an HTTP status: the ingress maps the first
    of ``codes`` it knows, as it maps a local error's class.

    Attributes:
        error_code: The owner's stable error code (``insufficient_funds``...).
        message: The owner's message.
        node: The node that handled the command.
        codes: The codes of the owner's error from the most specific to ``eskit_error``
            (``insufficient_funds``, ``domain_rejected``, ...; empty for an internal error),
            see :func:`engine.errors.error_codes`.
    """

    code = "remote_error"

    def __init__(
        self, error_code: str, message: str, node: str, codes: tuple[str, ...] = ()
    ) -> None:
        super().__init__(error_code, message, node, codes)
        self.error_code = error_code
        self.message = message
        self.node = node
        self.codes = codes or (error_code,)

    def __str__(self) -> str:
        return self.message


@attrs.frozen(kw_only=True)
class CommandRequest:
    """A command as the HTTP ingress took it: what crosses between nodes.

    Attributes:
        plugin: The plugin's name.
        command: The command's name within the plugin.
        stream_id: The stream (already derived when the plugin derives it).
        data: The command's fields, as JSON.
        command_id: The idempotency key, or ``None``.
    """

    plugin: str
    command: str
    stream_id: str
    data: Mapping[str, Any]
    command_id: str | None = None

    def to_json(self) -> bytes:
        """The request as the bytes of a NATS message."""
        return orjson.dumps(attrs.asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> CommandRequest:
        """Read a request from a NATS message.

        Raises:
            ValueError: Not a command request.
        """
        value = orjson.loads(data)
        if not isinstance(value, dict) or not isinstance(value.get("data"), dict):
            raise ValueError("not a command request")
        command_id = value.get("command_id")
        return cls(
            plugin=str(value["plugin"]),
            command=str(value["command"]),
            stream_id=str(value["stream_id"]),
            data=value["data"],
            command_id=None if command_id is None else str(command_id),
        )


@attrs.frozen
class ClusterStatistics:
    """What the router did since it started.

    Attributes:
        owned: Streams whose lease this node holds now.
        local: Commands handled here for a stream this node owned (or took).
        forwarded: Commands sent to their owner.
        served: Commands other nodes forwarded here.
        unowned: Commands handled here without the lease (owner gone, registry
            unreachable, or the lease not taken in time).
        unknown_outcomes: Forwarded commands whose reply did not come back in time.
    """

    owned: int
    local: int
    forwarded: int
    served: int
    unowned: int
    unknown_outcomes: int


def stream_lease_key(stream_id: str) -> str:
    """The lock-registry key of a stream's ownership lease."""
    return f"stream.{stream_id}"


#: Stands for the reply when nobody listens on the owner's subject.
_OWNER_GONE = StoredMsg("", 0, b"", {})

#: Handles a command on this node and returns the JSON-ready result.
LocalHandler = Callable[[CommandRequest], Awaitable[dict[str, Any]]]
#: The message sent back for an error (its codes go along, see ``error_codes``).
ErrorDescriber = Callable[[BaseException], str]


@attrs.define(eq=False)
class _Owned:
    stream_id: str
    # Its deadline is when the lease is let go: pushed back after each command, and
    # put off indefinitely while a command runs.
    idle: trio.CancelScope
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    busy: int = 0


@attrs.define(eq=False)
class ClusterRouter:
    """Routes each command to its stream's owner; serves commands forwarded here.

    Get one from :func:`open_cluster_router`.

    Args:
        connection: The NATS connection requests travel on.
        locks: The shared lock registry whose stream leases say who owns what.
        node_id: This node's id (the lease owner name and the request subject).
        namespace: Prefix of the request subjects (``<namespace>.cmd.<node_id>``).
        handle_local: Runs a command on this node.
        describe_error: The message sent back to the caller for an error (its codes
            go with it).
        forward_timeout: Seconds before a forwarded command's outcome is unknown.
        idle_release: Seconds a stream's lease is kept after its last command.
        take_timeout: Seconds to wait for the lease of a stream nobody owned.
    """

    connection: NatsConnection
    locks: LockRegistry
    node_id: str
    namespace: str
    handle_local: LocalHandler
    describe_error: ErrorDescriber
    forward_timeout: float = DEFAULT_FORWARD_TIMEOUT
    idle_release: float = DEFAULT_IDLE_RELEASE
    take_timeout: float = DEFAULT_TAKE_TIMEOUT
    _nursery: trio.Nursery | None = None
    _owned: dict[str, _Owned] = attrs.field(factory=dict)
    _taking: dict[str, trio.Event] = attrs.field(factory=dict)
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(
            ("local", "forwarded", "served", "unowned", "unknown_outcomes"), 0
        )
    )

    def subject_of(self, node_id: str) -> str:
        """The subject a node takes forwarded commands on."""
        return f"{self.namespace}.cmd.{node_id}"

    def statistics(self) -> ClusterStatistics:
        """Counters since start, and the streams owned now."""
        return ClusterStatistics(owned=len(self._owned), **self._counts)

    def owned_streams(self) -> list[str]:
        """The streams this node holds the lease of, sorted."""
        return sorted(self._owned)

    # -- sending --------------------------------------------------------------------------

    async def send(self, request: CommandRequest) -> dict[str, Any]:
        """Handle ``request`` where its stream is owned and return the result.

        Raises:
            UnknownOutcomeError: It was forwarded and no reply came in time.
            RemoteCommandError: The owner refused it or failed.
            Exception: Whatever handling it here raised (a domain rejection...).
        """
        owned = self._owned.get(request.stream_id)
        if owned is not None:
            return await self._run_owned(owned, request)
        try:
            owner = await self.locks.owner(stream_lease_key(request.stream_id))
        except (OSError, TimeoutError, EskitError, trio.ClosedResourceError) as exc:
            logger.warning("cannot ask who owns %r (%r); handling it here", request.stream_id, exc)
            return await self._run_unowned(request)
        if owner is None:
            owned = await self._take(request.stream_id)
            if owned is not None:
                return await self._run_owned(owned, request)
            try:
                owner = await self.locks.owner(stream_lease_key(request.stream_id))
            except (OSError, TimeoutError, EskitError, trio.ClosedResourceError):
                owner = None
        if owner is None or owner == self.node_id:
            # The lease is being taken or let go, or is this node's from before a
            # restart: handle it here (the expected version fences any overlap).
            return await self._run_unowned(request)
        return await self._forward(owner, request)

    async def _forward(self, owner: str, request: CommandRequest) -> dict[str, Any]:
        if request.command_id is None:
            # The caller needs an id to retry an unknown outcome safely.
            request = attrs.evolve(request, command_id=uuid.uuid4().hex)
        assert request.command_id is not None
        self._counts["forwarded"] += 1
        reply = None
        with trio.move_on_after(self.forward_timeout):
            try:
                reply = await self.connection.request(self.subject_of(owner), request.to_json())
            except NoRespondersError:
                # Certainly not handled: the owner is gone (its lease not run out yet).
                # Handled here, outside the forwarding deadline.
                reply = _OWNER_GONE
            except (OSError, TimeoutError, trio.ClosedResourceError) as exc:
                logger.warning("forwarding to %r failed: %r", owner, exc)
        if reply is _OWNER_GONE:
            self._counts["forwarded"] -= 1
            self._take_in_background(request.stream_id)
            return await self._run_unowned(request)
        if reply is None:
            self._counts["unknown_outcomes"] += 1
            raise UnknownOutcomeError(request.command_id, request.stream_id, owner)
        answer = orjson.loads(reply.data)
        if "error" in answer:
            error = answer["error"]
            codes = tuple(str(code) for code in error.get("codes", ()))
            raise RemoteCommandError(str(error["code"]), str(error["message"]), owner, codes)
        result: dict[str, Any] = answer["result"]
        return result

    async def _run_owned(self, owned: _Owned, request: CommandRequest) -> dict[str, Any]:
        self._counts["local"] += 1
        owned.busy += 1
        owned.idle.deadline = math.inf
        try:
            # One command of a stream at a time: they would only conflict.
            async with owned.lock:
                return await self.handle_local(request)
        finally:
            owned.busy -= 1
            if not owned.busy:
                owned.idle.deadline = trio.current_time() + self.idle_release

    async def _run_unowned(self, request: CommandRequest) -> dict[str, Any]:
        self._counts["unowned"] += 1
        return await self.handle_local(request)

    # -- ownership -------------------------------------------------------------------------

    async def _take(self, stream_id: str) -> _Owned | None:
        """Take the stream's lease within ``take_timeout``; ``None`` if that failed."""
        taking = self._taking.get(stream_id)
        if taking is not None:
            with trio.move_on_after(self.take_timeout):
                await taking.wait()
            return self._owned.get(stream_id)
        assert self._nursery is not None
        self._taking[stream_id] = done = trio.Event()
        try:
            with trio.move_on_after(self.take_timeout):
                owned: _Owned = await self._nursery.start(self._own, stream_id)
                return owned
            return None
        except RuntimeError:
            return None  # _own gave up before holding the lease (and logged why)
        finally:
            del self._taking[stream_id]
            done.set()

    def _take_in_background(self, stream_id: str) -> None:
        if stream_id in self._taking or stream_id in self._owned or self._nursery is None:
            return
        self._taking[stream_id] = done = trio.Event()

        async def take() -> None:
            try:
                await self._own(stream_id)
            finally:
                if self._taking.get(stream_id) is done:
                    del self._taking[stream_id]
                done.set()

        self._nursery.start_soon(take)

    async def _own(
        self, stream_id: str, *, task_status: trio.TaskStatus[_Owned] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the stream's lease until it has been idle for ``idle_release`` seconds."""
        key = stream_lease_key(stream_id)
        try:
            async with self.locks.hold(key):
                idle = trio.CancelScope(deadline=trio.current_time() + self.idle_release)
                owned = _Owned(stream_id, idle)
                self._owned[stream_id] = owned
                if stream_id in self._taking:
                    self._taking[stream_id].set()
                task_status.started(owned)
                try:
                    with idle:
                        await trio.sleep_forever()
                finally:
                    del self._owned[stream_id]
        except LockNotHeldError:
            logger.warning("lost the lease of stream %r", stream_id)
        except Exception as exc:
            # Ownership is an optimisation: without it commands still run (fenced by
            # the expected version), so a registry failure must not stop the router.
            logger.warning("cannot hold the lease of stream %r: %r", stream_id, exc)

    # -- serving --------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[ClusterRouter] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve commands forwarded to this node until cancelled.

        Resource handling:
            Owns the nursery of the lease holders and of the commands being served;
            cancelling ``run`` releases every stream lease.
        """
        async with (
            self.connection.subscribe(self.subject_of(self.node_id), buffer_size=1024) as sub,
            trio.open_nursery() as nursery,
        ):
            self._nursery = nursery
            limit = trio.Semaphore(MAX_SERVING)
            # Started once the server has the subscription: a command forwarded here
            # right after start-up finds a responder instead of "no responders".
            await self.connection.flush()
            task_status.started(self)
            try:
                async for msg in sub.messages:
                    await limit.acquire()
                    nursery.start_soon(self._serve, msg, limit)
            finally:
                self._nursery = None

    async def _serve(self, msg: InMsg, limit: trio.Semaphore) -> None:
        try:
            self._counts["served"] += 1
            try:
                request = CommandRequest.from_json(msg.data)
            except (ValueError, KeyError) as exc:
                answer = {
                    "error": {
                        "code": "bad_request",
                        "codes": ["bad_request", "codec_error"],
                        "message": str(exc),
                    }
                }
            else:
                answer = await self._answer(request)
            if msg.reply:
                try:
                    await self.connection.send(msg.reply, orjson.dumps(answer, default=str))
                except (OSError, trio.ClosedResourceError) as exc:
                    logger.warning("could not answer a forwarded command: %r", exc)
        finally:
            limit.release()

    async def _answer(self, request: CommandRequest) -> dict[str, Any]:
        try:
            owned = self._owned.get(request.stream_id)
            if owned is None:
                owned = await self._take(request.stream_id)
            if owned is not None:
                result = await self._run_owned(owned, request)
            else:
                # Never forwarded twice: the sender thought this node owns it.
                result = await self._run_unowned(request)
        except Exception as exc:
            codes = error_codes(exc)
            error = {
                "code": codes[0] if codes else "internal_error",
                "codes": list(codes),
                "message": self.describe_error(exc),
            }
            return {"error": error}
        return {"result": result}


@unwrap_lone_errors
@asynccontextmanager
async def open_cluster_router(
    connection: NatsConnection,
    locks: LockRegistry,
    *,
    node_id: str,
    namespace: str,
    handle_local: LocalHandler,
    describe_error: ErrorDescriber,
    forward_timeout: float = DEFAULT_FORWARD_TIMEOUT,
    idle_release: float = DEFAULT_IDLE_RELEASE,
    take_timeout: float = DEFAULT_TAKE_TIMEOUT,
) -> AsyncIterator[ClusterRouter]:
    """Route commands across the cluster for the duration of the block.

    Resource handling:
        Subscribes to this node's command subject before yielding; on exit stops
        serving and releases every stream lease.
    """
    router = ClusterRouter(
        connection,
        locks,
        node_id,
        namespace,
        handle_local,
        describe_error,
        forward_timeout=forward_timeout,
        idle_release=idle_release,
        take_timeout=take_timeout,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        try:
            yield router
        finally:
            nursery.cancel_scope.cancel()
