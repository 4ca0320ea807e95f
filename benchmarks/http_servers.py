"""The HTTP servers ``http.command`` measures beside the engine, each run as its own process:

``python -m benchmarks.http_servers noop``  eskit's server (engine/daemon/server.py) with an
    app that answers every request with a fixed JSON body: the ingress alone (a floor);
``python -m benchmarks.http_servers bare``  a bare Trio server driving httptools' llhttp
    parser and writing a fixed reply: what Trio + the parser cost (the floor of the floor);
``python -m benchmarks.http_servers peer``  FastAPI on uvicorn with the eventsourcing
    library's bank, persisted as the environment says (``PERSISTENCE_MODULE``, ...): the
    peer, same routes and bodies as the engine.

Each prints its URL on the first line of stdout once it listens, and serves until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import functools
import signal
import socket
import sys
import uuid
from typing import Any

import trio

_REPLY = b'{"ok":true}'


async def _until_signal(nursery: trio.Nursery) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            nursery.cancel_scope.cancel()
            return


async def _noop() -> None:
    from engine.daemon.http1 import Request, Response
    from engine.daemon.server import serve_http

    async def app(request: Request) -> Response:
        return Response(200, _REPLY)

    async with trio.open_nursery() as nursery:
        urls = await nursery.start(functools.partial(serve_http, app, "127.0.0.1", 0))
        print(urls[0], flush=True)
        await _until_signal(nursery)


async def _bare() -> None:
    import httptools

    reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(_REPLY),
        _REPLY,
    )

    class Counter:
        complete = 0

        def on_message_complete(self) -> None:
            self.complete += 1

    async def handler(stream: trio.SocketStream) -> None:
        counter = Counter()
        parser = httptools.HttpRequestParser(counter)
        try:
            while data := await stream.receive_some(65536):
                parser.feed_data(data)
                if counter.complete:
                    await stream.send_all(reply * counter.complete)
                    counter.complete = 0
        except (trio.BrokenResourceError, httptools.HttpParserError):
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        print(f"http://127.0.0.1:{port}", flush=True)
        await _until_signal(nursery)


def _peer() -> None:
    # Persistence comes from the environment (PERSISTENCE_MODULE, SQLITE_DBNAME, ...).
    import uvicorn
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event
    from eventsourcing.persistence import IntegrityError, RecordConflictError
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse

    namespace = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")

    class Account(Aggregate):
        @staticmethod
        def create_id(name: str, initial_balance: int) -> uuid.UUID:
            return uuid.uuid5(namespace, name)

        @event("Opened")
        def __init__(self, name: str, initial_balance: int) -> None:
            self.name = name
            self.balance = initial_balance

        @event("Deposited")
        def deposit(self, amount: int) -> None:
            self.balance += amount

    class Bank(Application[uuid.UUID]):
        def open(self, name: str, initial_balance: int) -> dict[str, Any]:
            account = Account(name, initial_balance)
            self.save(account)
            return {"stream_id": name, "version": account.version}

        def deposit(self, name: str, amount: int) -> dict[str, Any]:
            for _ in range(10):  # retry on a concurrent writer, like the engine does
                account = self.repository.get(uuid.uuid5(namespace, name))
                account.deposit(amount)
                try:
                    self.save(account)
                except (IntegrityError, RecordConflictError):
                    continue
                return {"stream_id": name, "version": account.version}
            raise RuntimeError("too many conflicts")

    bank = Bank()
    api = FastAPI()

    @api.post("/commands/bank/{command}")
    def command(command: str, body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        data = body.get("data", {})
        if command == "OpenAccount":
            return bank.open(body["stream_id"], int(data.get("initial_balance", 0)))
        if command == "Deposit":
            return bank.deposit(body["stream_id"], int(data["amount"]))
        return JSONResponse({"error": {"code": "unknown_command"}}, status_code=404)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    config = uvicorn.Config(
        api, host="127.0.0.1", port=port, log_level="warning", access_log=False, http="httptools"
    )
    server = uvicorn.Server(config)
    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets)
        print(f"http://127.0.0.1:{port}", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run()


def main() -> None:
    match sys.argv[1:]:
        case ["noop"]:
            trio.run(_noop)
        case ["bare"]:
            trio.run(_bare)
        case ["peer"]:
            _peer()
        case _:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
