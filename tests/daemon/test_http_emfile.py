"""Out of file descriptors (EMFILE): the server backs off accepting, logs one warning per
interval instead of a traceback per try, and serves again once descriptors are free.

The server runs in a child process whose open-files limit is lowered to 64, so the test's
own process keeps its descriptors."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import trio

from tests.daemon.rawhttp import Connection, get

SERVER = textwrap.dedent(
    """
    import functools, logging, resource, sys
    import trio
    from engine.daemon.http1 import Response, ServerLimits
    from engine.daemon.server import serve_http

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(message)s")

    async def app(request):
        return Response(200, b'{"ok":true}')

    async def main():
        async with trio.open_nursery() as nursery:
            serve = functools.partial(
                serve_http, app, "127.0.0.1", 0, limits=ServerLimits(max_connections=10_000)
            )
            urls = await nursery.start(serve)
            print(urls[0], flush=True)
            stdin = trio.lowlevel.FdStream(0)
            while await stdin.receive_some():  # until the test closes our stdin
                pass
            nursery.cancel_scope.cancel()

    trio.run(main)
    """
)


async def _line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        chunk = await stream.receive_some()
        if not chunk:
            raise EOFError(buffer.decode())
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def test_out_of_descriptors_backs_off_and_logs_once() -> None:
    """With more clients than descriptors, one 'cannot accept' warning is logged (not one
    per try), and once the clients leave a new client is served."""
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-c", SERVER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdin is not None
        out, err = bytearray(), bytearray()
        with trio.fail_after(30):
            url = await _line(process.stdout, out)
            clients = [await Connection.open(url) for _ in range(100)]
            lines = [await _line(process.stderr, err)]
            assert lines[0].startswith("WARNING cannot accept HTTP connections"), lines
            # Hold the descriptors through four more tries (0.05 + 0.1 + 0.2 + 0.4 s).
            while sum(line.startswith("DEBUG accept failed") for line in lines) < 5:
                lines.append(await _line(process.stderr, err))
            assert [line for line in lines if line.startswith("WARNING")] == lines[:1]
            for client in clients:
                await client.aclose()
            fresh = await Connection.open(url)
            await fresh.send(get("/"))
            assert (await fresh.reply()).status == 200
            await fresh.aclose()
            await process.stdin.aclose()
            while chunk := await process.stderr.receive_some():
                err += chunk
            await process.wait()
        rest = err.decode()
        assert "WARNING" not in rest, rest
        assert "Traceback" not in rest, rest
        assert process.returncode == 0, rest
