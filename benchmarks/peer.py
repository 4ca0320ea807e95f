"""The peer: the eventsourcing library doing the equivalent work, on the same database."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from benchmarks.domain import NOTE
from benchmarks.harness import Stopwatch


class PeerAccount(Aggregate):
    """The peer's aggregate: the same account, with the same event payload."""

    @event("Opened")
    def __init__(self) -> None:
        self.balance = 0
        self.deposits = 0

    @event("Deposited")
    def deposit(self, amount: int, note: str = NOTE, reference: str = "ref-0000000000") -> None:
        self.balance += amount
        self.deposits += 1


class PeerBank(Application[uuid.UUID]):
    """The peer's application."""


def _classes() -> tuple[type[PeerAccount], type[PeerBank]]:
    return PeerAccount, PeerBank


def open_app(env: Mapping[str, str]) -> Any:
    """An eventsourcing application with the given persistence settings."""
    _, bank = _classes()
    return bank(env=dict(env))


def sequential(env: Mapping[str, str], commands: int, streams: int) -> tuple[float, Stopwatch]:
    """Retrieve, deposit, save: one command at a time, round-robin over ``streams``."""
    account_cls, _ = _classes()
    app = open_app(env)
    ids = []
    for _ in range(streams):
        acc = account_cls()
        app.save(acc)
        ids.append(acc.id)
    watch = Stopwatch()
    with watch:
        for i in range(commands):
            started = time.perf_counter()
            acc = app.repository.get(ids[i % streams])
            acc.deposit(1)
            app.save(acc)
            watch.latencies.append(time.perf_counter() - started)
    app.close()
    return watch.rate(commands), watch


def concurrent(env: Mapping[str, str], tasks: int, per_task: int) -> float:
    """``tasks`` threads, each depositing into its own aggregate."""
    account_cls, _ = _classes()
    app = open_app(env)
    ids = []
    for _ in range(tasks):
        acc = account_cls()
        app.save(acc)
        ids.append(acc.id)

    def work(index: int) -> None:
        for _ in range(per_task):
            acc = app.repository.get(ids[index])
            acc.deposit(1)
            app.save(acc)

    watch = Stopwatch()
    with watch, ThreadPoolExecutor(tasks) as pool:
        list(pool.map(work, range(tasks)))
    app.close()
    return watch.rate(tasks * per_task)


def load_stream(env: Mapping[str, str], events: int) -> float:
    """Reconstruct one aggregate of ``events`` events (cache off), events per second."""
    account_cls, _ = _classes()
    app = open_app({k: v for k, v in env.items() if k != "AGGREGATE_CACHE_MAXSIZE"})
    acc = account_cls()
    for _ in range(events):
        acc.deposit(1)
    app.save(acc)
    watch = Stopwatch()
    with watch:
        rebuilt = app.repository.get(acc.id)
    assert rebuilt.deposits == events
    app.close()
    return watch.rate(events + 1)


def in_env(env: Mapping[str, str], func: Callable[..., Any], *args: Any) -> Any:
    """Run ``func`` with the process environment extended by ``env`` (eventsourcing reads it)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return func(env, *args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
