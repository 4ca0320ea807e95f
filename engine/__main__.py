"""The ``eskit`` command line: run the engine, inspect its store, talk to it over HTTP."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import ConfigError, EskitError, PluginError

DEFAULT_URL = "http://127.0.0.1:8080"
#: The config file ``eskit init`` writes, read from the current folder when present.
DEFAULT_CONFIG = "eskit.toml"
#: The exit code of a command whose output pipe was closed (128 + SIGPIPE, as a shell
#: reports a Unix tool that SIGPIPE stopped).
BROKEN_PIPE_EXIT = 141


def config_path(given: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The config file to read: ``-c``, else ``$ESKIT_CONFIG``, else ``./eskit.toml`` when
    it exists, else ``None`` (the embedded default)."""
    env = os.environ if environ is None else environ
    if given:
        return given
    if env.get("ESKIT_CONFIG"):
        return env["ESKIT_CONFIG"]
    return DEFAULT_CONFIG if os.path.isfile(DEFAULT_CONFIG) else None


def describe_config(path: str | None) -> str:
    """Which config is used, for the start-up lines and the log."""
    if path is None:
        return f"the embedded default (no -c, no $ESKIT_CONFIG, no ./{DEFAULT_CONFIG})"
    return os.path.abspath(path)


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
            help=f"TOML config file (default: $ESKIT_CONFIG, else ./{DEFAULT_CONFIG} when "
            "there is one, else the embedded default)",
        )
        return sub

    run = with_config(commands.add_parser("run", help="run the engine until SIGINT/SIGTERM"))
    run.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback when the engine cannot start or stops on an error "
        "(also with ESKIT_LOG_LEVEL=DEBUG)",
    )
    init = commands.add_parser("init", help="scaffold eskit.toml and a plugin package")
    init.add_argument("name", help="the plugin's name (a lowercase identifier)")
    init.add_argument("--dir", default=".", help="where to write (default: here)")
    init.add_argument(
        "--package", help="the import package (default: the plugin's name)", default=None
    )
    init.add_argument(
        "--distribution",
        help="the name pip installs it as (default: the plugin's name, '-' for '_')",
        default=None,
    )
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


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _describe_failure(error: BaseException, config: Any) -> str:
    """One line saying why the engine could not start (or stopped)."""
    from engine.observability.logging import shorten

    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {config.http.host}:{config.http.port}: the address is in use "
            "(another process has that port: stop it or change [http] port)"
        )
    if isinstance(error, OSError) and error.strerror and not isinstance(error, EskitError):
        where = f" ({error.filename})" if error.filename else ""
        return shorten(f"{error.strerror}{where}")
    text = " ".join(str(error).split())
    if isinstance(error, (EskitError, *trio_errors())):
        return shorten(text or type(error).__name__, 1000)
    return shorten(f"{type(error).__name__}: {text}" if text else type(error).__name__, 1000)


def trio_errors() -> tuple[type[BaseException], ...]:
    """Resource and backend errors: their text says what happened, the type adds nothing."""
    import trio

    from engine.errors import BackendError

    return (trio.BrokenResourceError, trio.ClosedResourceError, BackendError)


def _report_failure(error: BaseException, config: Any, debug: bool, *, hint: bool = True) -> int:
    """Print why the engine failed, in one line (and the traceback when debugging)."""
    leaves = _leaves(error)
    if debug:
        traceback.print_exception(error)
    reasons = list(dict.fromkeys(_describe_failure(leaf, config) for leaf in leaves))
    hint_text = " (eskit run --debug shows the traceback)" if hint and not debug else ""
    print(f"eskit: {'; '.join(reasons)}{hint_text}", file=sys.stderr, flush=True)
    return 2 if all(isinstance(leaf, ConfigError | PluginError) for leaf in leaves) else 1


def _run(config_path: str | None, *, debug: bool = False) -> int:
    import trio

    from engine.daemon.config import load_config
    from engine.daemon.engine import open_engine
    from engine.daemon.systemd import notify_service, reopen_log_files
    from engine.observability.logging import configure_logging

    config = load_config(config_path)
    env = os.environ
    # ESKIT_LOG_* override [logging]; configure_logging reads them where we pass None.
    configure_logging(
        node_id=config.engine.node_id,
        json_format=None if env.get("ESKIT_LOG_FORMAT") else config.logging.format == "json",
        level=None if env.get("ESKIT_LOG_LEVEL") else config.logging.level,
        access_log=None if env.get("ESKIT_LOG_ACCESS") else config.logging.access_log,
        lean_records=True,
    )
    logging.getLogger("eskit.engine").info("config: %s", describe_config(config_path))
    debug = debug or logging.getLogger().getEffectiveLevel() <= logging.DEBUG

    async def main() -> None:
        stops = (signal.SIGINT, signal.SIGTERM)
        with trio.open_signal_receiver(*stops, signal.SIGHUP) as signals:
            async with open_engine(config) as engine, notify_service(engine):
                plugins = ", ".join(sorted(engine.plugins)) or "none"
                print(f"eskit engine {config.engine.node_id!r} running", flush=True)
                print(f"  config:  {describe_config(config_path)}", flush=True)
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

    try:
        trio.run(main)
    except Exception as error:  # the engine could not start, or stopped on an error
        return _report_failure(error, config, debug)
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
    from engine.daemon.raw_events import UnknownEventData, tolerant_codec

    config = load_config(config_path)
    plugins = load_plugins(
        config.plugins.enabled,
        paths=config.plugins.paths,
        modules=config.plugins.modules,
        settings=config.plugins.settings,
    )
    # Events of types no enabled plugin knows are printed as stored ("unknown_type").
    codec: Codec[Any] = tolerant_codec(Codec(merged_registry(plugins)))

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
            unknown = isinstance(event.data, UnknownEventData)
            record = {
                "position": event.position,
                "stream_id": event.stream_id,
                "version": event.version,
                "type": event.type,
                "data": event.data.payload if unknown else codec._conv.unstructure(event.data),
                "recorded_at": event.recorded_at.isoformat(),
            }
            if unknown:
                record["unknown_type"] = True
            print(json.dumps(record, ensure_ascii=False), flush=True)

    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --follow
            trio.run(main)
    except BrokenPipeError:
        raise  # main() ends quietly
    except Exception as error:  # the store cannot be opened or read: one line
        return _report_failure(error, config, debug=False, hint=False)
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


def _load_enabled_plugins(config: Any) -> list[Any]:
    from engine.daemon.plugins import load_plugins

    return load_plugins(
        config.plugins.enabled,
        paths=config.plugins.paths,
        modules=config.plugins.modules,
        settings=config.plugins.settings,
    )


def _check_config(path: str | None) -> int:
    """Validate the config and load its plugins as ``eskit run`` would (a misspelled
    plugin name fails here, not at start-up)."""
    from engine.daemon.config import load_config
    from engine.daemon.engine import merged_registry

    config = load_config(path)
    plugins = _load_enabled_plugins(config)
    merged_registry(plugins)  # two plugins registering one event type fail here too
    print(f"config: {describe_config(path)}")
    print(
        f"config ok: store {config.store.backend}, http {config.http.host}:{config.http.port}, "
        f"plugins {', '.join(sorted(p.name for p in plugins)) or 'none'}"
    )
    return 0


def _plugins(path: str | None) -> int:
    """Every plugin found, whether it will run, and what the running ones provide."""
    from engine.daemon.config import load_config
    from engine.daemon.plugins import load_plugin_sources, plan_plugins

    config = load_config(path)
    print(f"config: {describe_config(path)}")
    enabled = config.plugins.enabled
    if enabled is None:
        print("enabled: every installed plugin and module ([plugins] enabled is not set)")
    else:
        print(f"enabled: {', '.join(enabled) or 'none (enabled = [])'}")
    loaded = load_plugin_sources(
        config.plugins.enabled,
        paths=config.plugins.paths,
        modules=config.plugins.modules,
        settings=config.plugins.settings,
    )
    running = {(source.kind, source.target): source.name for _, source in loaded}
    for source in plan_plugins(
        config.plugins.enabled, paths=config.plugins.paths, modules=config.plugins.modules
    ):
        runs = (source.kind, source.target) in running
        name = running.get((source.kind, source.target), source.name)
        print(
            f"{name:<24} {'runs' if runs else 'off':<5} {source.kind:<12} "
            f"{source.distribution:<24} {source.target}"
        )
    plugins = [plugin for plugin, _ in loaded]
    print(f"will run: {', '.join(p.name for p in plugins) or 'nothing'}")
    for plugin in plugins:
        commands = sorted(n for b in plugin.commands for n in b.command_names())
        print(f"  {plugin.name}: {plugin.description}")
        print(f"    commands: {', '.join(commands) or '-'}")
        print(f"    projections: {', '.join(p.name for p in plugin.projections) or '-'}")
        print(f"    automations: {', '.join(plugin.reactors) or '-'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "config"):
        args.config = config_path(args.config)
    try:
        return _command(parser, args)
    except BrokenPipeError:
        # The reader went away (`eskit events | head`): stop quietly, as Unix tools do.
        # Python would complain again when it flushes stdout at exit: point it at nothing.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE_EXIT


def _command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        match args.command:
            case "run":
                return _run(args.config, debug=args.debug)
            case "init":
                from pathlib import Path

                from engine.daemon.scaffold import ScaffoldError, scaffold

                try:
                    written = scaffold(
                        args.name,
                        Path(args.dir),
                        package=args.package,
                        distribution=args.distribution,
                    )
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
                return _check_config(args.config)
            case "plugins":
                return _plugins(args.config)
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
