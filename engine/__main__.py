"""The ``eskit`` command line: run the engine, inspect its store, talk to it over HTTP."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from engine.errors import EskitError

DEFAULT_URL = "http://127.0.0.1:8080"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``eskit`` command."""
    from engine import __version__

    parser = argparse.ArgumentParser(
        prog="eskit",
        description="eskit: event sourcing for Python, from SQLite to PostgreSQL + NATS.",
    )
    parser.add_argument("--version", action="version", version=f"eskit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "-c",
            "--config",
            default=os.environ.get("ESKIT_CONFIG"),
            help="TOML config file (default: $ESKIT_CONFIG, else the embedded default)",
        )
        return sub

    with_config(commands.add_parser("run", help="run the engine until SIGINT/SIGTERM"))
    init = commands.add_parser("init", help="scaffold eskit.toml and a plugin package")
    init.add_argument("name", help="the plugin's name (a lowercase identifier)")
    init.add_argument("--dir", default=".", help="where to write (default: here)")
    with_config(commands.add_parser("check-config", help="validate a config and print it"))
    with_config(commands.add_parser("plugins", help="list the installed plugins"))
    with_config(
        commands.add_parser(
            "openapi", help="print the OpenAPI document of the engine a config describes"
        )
    )
    events = with_config(commands.add_parser("events", help="read a stream or the whole log"))
    events.add_argument("stream_id", nargs="?", help="a stream id (default: the whole log)")
    events.add_argument("--after", type=int, default=0, help="start after this version/position")
    events.add_argument("--limit", type=int, default=100, help="at most this many events per read")
    events.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C"
    )

    send = commands.add_parser("send", help="send a command to a running engine over HTTP")
    send.add_argument("plugin")
    send.add_argument("command_name", metavar="command")
    send.add_argument("data", nargs="?", default="{}", help="the command's fields as JSON")
    send.add_argument("--stream", dest="stream_id", help="the stream id")
    send.add_argument("--id", dest="command_id", help="a command id (makes retries safe)")
    send.add_argument("--url", default=os.environ.get("ESKIT_URL", DEFAULT_URL))
    send.add_argument("--token", default=os.environ.get("ESKIT_TOKEN", ""))

    query = commands.add_parser("query", help="run a plugin query on a running engine")
    query.add_argument("plugin")
    query.add_argument("query_name", metavar="query")
    query.add_argument("params", nargs="*", help="name=value query parameters")
    query.add_argument("--url", default=os.environ.get("ESKIT_URL", DEFAULT_URL))
    query.add_argument("--token", default=os.environ.get("ESKIT_TOKEN", ""))

    status = commands.add_parser(
        "projections",
        help="runner status of a running engine, or rebuild a projection (with progress)",
    )
    status.add_argument("action", nargs="?", choices=["status", "rebuild"], default="status")
    status.add_argument("name", nargs="?", help="the projection to rebuild (plugin.name)")
    status.add_argument(
        "--no-wait", action="store_true", help="start the rebuild and return at once"
    )
    status.add_argument("--url", default=os.environ.get("ESKIT_URL", DEFAULT_URL))
    status.add_argument("--token", default=os.environ.get("ESKIT_TOKEN", ""))

    dead = commands.add_parser(
        "dead-letters", help="list (or discard) the events runners parked, on a running engine"
    )
    dead.add_argument("--runner", help="only this runner's (plugin.name@1, or plugin.name)")
    dead.add_argument(
        "--discard",
        nargs=2,
        metavar=("RUNNER", "POSITION"),
        help="forget one parked event once it was dealt with",
    )
    dead.add_argument("--url", default=os.environ.get("ESKIT_URL", DEFAULT_URL))
    dead.add_argument("--token", default=os.environ.get("ESKIT_TOKEN", ""))
    return parser


def _http(url: str, token: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        payload = error.read()
        try:
            detail = json.loads(payload)["error"]
            raise SystemExit(f"eskit: {error.code} {detail['code']}: {detail['message']}") from None
        except (ValueError, KeyError, TypeError):
            raise SystemExit(f"eskit: HTTP {error.code}: {payload[:200]!r}") from None
    except urllib.error.URLError as error:
        raise SystemExit(f"eskit: cannot reach the engine at {url}: {error.reason}") from None


def _run(config_path: str | None) -> int:
    import trio

    from engine.daemon.config import load_config
    from engine.daemon.engine import open_engine
    from engine.daemon.systemd import notify_service, reopen_log_files
    from engine.observability.logging import configure_logging

    config = load_config(config_path)
    configure_logging(node_id=config.engine.node_id)

    async def main() -> None:
        stops = (signal.SIGINT, signal.SIGTERM)
        with trio.open_signal_receiver(*stops, signal.SIGHUP) as signals:
            async with open_engine(config) as engine, notify_service(engine):
                plugins = ", ".join(sorted(engine.plugins)) or "none"
                print(f"eskit engine {config.engine.node_id!r} running", flush=True)
                print(f"  store:   {config.store.backend}", flush=True)
                print(f"  plugins: {plugins}", flush=True)
                print(f"  runners: {', '.join(sorted(engine.runners)) or 'none'}", flush=True)
                for url in engine.http_urls:
                    print(f"  http:    {url}", flush=True)
                if engine.http_urls and "bank" in engine.plugins:
                    base = engine.http_urls[0]
                    print(
                        "try:     curl -s -X POST "
                        f"{base}/commands/bank/OpenAccount "
                        '-d \'{"stream_id": "acc-1", "data": {"initial_balance": 100}}\'',
                        flush=True,
                    )
                    print(
                        f"         curl -s '{base}/queries/bank/balance?account=acc-1'", flush=True
                    )
                print("ready (stop with Ctrl-C or SIGTERM)", flush=True)
                async for received in signals:
                    if received not in stops:  # SIGHUP: logrotate moved the log files
                        print(
                            f"received SIGHUP, reopened {reopen_log_files()} log files", flush=True
                        )
                        continue
                    print(f"received {signal.Signals(received).name}, shutting down", flush=True)
                    break
        print("stopped", flush=True)

    trio.run(main)
    return 0


#: Seconds between store reads while following.
FOLLOW_INTERVAL = 0.5


def _events(
    config_path: str | None, stream_id: str | None, after: int, limit: int, follow: bool
) -> int:
    import trio

    from engine.codec import Codec
    from engine.daemon.config import load_config
    from engine.daemon.engine import merged_registry, open_store_from_config
    from engine.daemon.plugins import load_plugins

    config = load_config(config_path)
    plugins = load_plugins(
        config.plugins.enabled, paths=config.plugins.paths, modules=config.plugins.modules
    )
    codec: Codec[Any] = Codec(merged_registry(plugins))

    async def main() -> None:
        cursor = after
        async with open_store_from_config(config, codec) as store:
            while True:
                if stream_id is None:
                    events = await store.read_all(after_position=cursor, limit=max(limit, 1))
                else:
                    events = await store.load(stream_id, after_version=cursor, limit=limit)
                print_events(events)
                if events:
                    last = events[-1]
                    cursor = last.position if stream_id is None else last.version
                if not follow:
                    return
                if len(events) < limit:
                    await trio.sleep(FOLLOW_INTERVAL)

    def print_events(events: list[Any]) -> None:
        for event in events:
            record = {
                "position": event.position,
                "stream_id": event.stream_id,
                "version": event.version,
                "type": event.type,
                "data": codec._conv.unstructure(event.data),
                "recorded_at": event.recorded_at.isoformat(),
            }
            print(json.dumps(record, ensure_ascii=False), flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --follow
        trio.run(main)
    return 0


def _bar(done: int, head: int, width: int = 30) -> str:
    fraction = 1.0 if head <= 0 else min(1.0, done / head)
    filled = round(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{head:,} events ({fraction:.0%})"


def _rebuild(url: str, token: str, name: str | None, wait: bool) -> int:
    """Start a rebuild over HTTP, then follow it with a progress bar until it switches."""
    if not name:
        raise SystemExit("eskit: projections rebuild needs the projection's name (plugin.name)")
    quoted = urllib.parse.quote(name, safe="")
    started = _http(f"{url}/projections/{quoted}/rebuild", token, "POST", {})
    print(
        f"rebuilding {name!r}: version {started['from_version']} -> {started['version']}",
        file=sys.stderr,
    )
    if not wait:
        return 0
    interactive = sys.stderr.isatty()
    last_line = 0.0
    while True:
        rebuild = _http(f"{url}/runners", token).get(name, {}).get("rebuild") or {}
        state = rebuild.get("state")
        line = _bar(int(rebuild.get("done", 0)), int(rebuild.get("head", 0)))
        if interactive:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        elif time.monotonic() - last_line >= 5 or state != "running":
            print(line, file=sys.stderr, flush=True)
            last_line = time.monotonic()
        if state != "running":
            if interactive:
                print(file=sys.stderr)
            break
        time.sleep(0.5)
    if state == "done":
        print(f"{name!r} switched to version {rebuild['version']} at position {rebuild['done']}")
        return 0
    print(f"eskit: rebuilding {name!r} failed: {rebuild.get('error')}", file=sys.stderr)
    return 1


def _dead_letters(url: str, token: str, runner: str | None, discard: list[str] | None) -> int:
    if discard is not None:
        name, position = discard
        path = "/".join(urllib.parse.quote(part, safe="") for part in (name, position))
        _http(f"{url}/dead-letters/{path}", token, "DELETE")
        print(f"discarded the dead letter of {name!r} at position {position}")
        return 0
    query = "" if runner is None else "?" + urllib.parse.urlencode({"runner": runner})
    print(json.dumps(_http(f"{url}/dead-letters{query}", token), indent=2, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        match args.command:
            case "run":
                return _run(args.config)
            case "init":
                from pathlib import Path

                from engine.daemon.scaffold import ScaffoldError, scaffold

                try:
                    written = scaffold(args.name, Path(args.dir))
                except ScaffoldError as error:
                    print(f"eskit: {error}", file=sys.stderr)
                    return 2
                for path in written:
                    print(f"wrote {path}")
                print(f"next: cd {args.dir} && eskit run        (the engine with your plugin)")
                print(f"      pytest {Path(args.dir) / args.name}   (its specs)")
                print(
                    f"      pip install -e {Path(args.dir) / args.name}   (to install it as a package)"
                )
                return 0
            case "check-config":
                from engine.daemon.config import load_config

                config = load_config(args.config)
                print(
                    f"config ok: store {config.store.backend}, http {config.http.host}:{config.http.port}"
                )
                return 0
            case "plugins":
                from engine.daemon.config import load_config
                from engine.daemon.plugins import available_plugins, load_plugins

                config = load_config(args.config)
                for source in available_plugins(config.plugins.paths):
                    print(f"{source.name:<16} {source.distribution:<24} {source.target}")
                for plugin in load_plugins(
                    config.plugins.enabled,
                    paths=config.plugins.paths,
                    modules=config.plugins.modules,
                ):
                    commands = sorted(n for b in plugin.commands for n in b.command_names())
                    print(f"  {plugin.name}: {plugin.description}")
                    print(f"    commands: {', '.join(commands) or '-'}")
                    print(
                        f"    projections: {', '.join(p.name for p in plugin.projections) or '-'}"
                    )
                    print(f"    automations: {', '.join(plugin.reactors) or '-'}")
                return 0
            case "openapi":
                import trio

                from engine.daemon.config import load_config
                from engine.daemon.openapi import config_document

                document = trio.run(config_document, load_config(args.config))
                print(json.dumps(document, indent=2, ensure_ascii=False))
                return 0
            case "events":
                return _events(args.config, args.stream_id, args.after, args.limit, args.follow)
            case "send":
                try:
                    data = json.loads(args.data)
                except ValueError:
                    raise SystemExit("eskit: the command data must be JSON") from None
                body = {"data": data, "stream_id": args.stream_id, "command_id": args.command_id}
                body = {k: v for k, v in body.items() if v is not None}
                url = f"{args.url}/commands/{args.plugin}/{args.command_name}"
                print(
                    json.dumps(_http(url, args.token, "POST", body), indent=2, ensure_ascii=False)
                )
                return 0
            case "query":
                params = "&".join(args.params)
                url = f"{args.url}/queries/{args.plugin}/{args.query_name}" + (
                    f"?{params}" if params else ""
                )
                print(json.dumps(_http(url, args.token), indent=2, ensure_ascii=False))
                return 0
            case "projections":
                if args.action == "rebuild":
                    return _rebuild(args.url, args.token, args.name, not args.no_wait)
                print(json.dumps(_http(f"{args.url}/runners", args.token), indent=2))
                return 0
            case "dead-letters":
                return _dead_letters(args.url, args.token, args.runner, args.discard)
    except EskitError as error:
        print(f"eskit: {error}", file=sys.stderr)
        return 2
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
