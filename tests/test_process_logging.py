"""Forwarding of process workers' log records to the parent's loggers.

Records travel on a pipe and are re-emitted by a listener thread, so they
arrive a little after the job that logged them returns: tests wait for them,
or look after ``stop()``, which passes on everything the workers logged.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from _helpers import PATIENCE, unique_prefix, wait_until
from _leakcheck import snapshot, wait_no_leaks, warm_up_process_machinery
from leasepool import LeasedExecutorManager, ProcessLoggingConfig
from leasepool._process_logging import encode_record

pytestmark = pytest.mark.timeout(60)

WORKER_LOGGER = "worker.jobs"
_log = logging.getLogger(WORKER_LOGGER)
_names = itertools.count(1)
_initialized_with: str | None = None


# -- jobs (run in worker processes) -----------------------------------------


def log_each_level(tag: str) -> int:
    _log.debug("debug %s", tag)
    _log.info("info %s", tag)
    _log.warning("warning %s", tag)
    _log.error("error %s", tag)
    return os.getpid()


def log_message(level: int, message: str) -> int:
    _log.log(level, "%s", message)
    return os.getpid()


def log_many(tag: str, count: int) -> int:
    for n in range(count):
        _log.info("%s %d", tag, n)
    return count


def log_flood(count: int) -> int:
    filler = "x" * 500
    for n in range(count):
        _log.info("flood %d %s", n, filler)
    return count


def log_flood_timed(count: int) -> float:
    """Log ``count`` records; return the seconds the worker spent on it."""
    started = time.monotonic()
    log_flood(count)
    return time.monotonic() - started


def log_unpicklable_argument() -> None:
    _log.info("lock=%s", threading.Lock())


def log_exception() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        _log.exception("it failed")


def log_with_extra() -> None:
    _log.info("extra", extra={"request_id": 7, "holder": threading.Lock()})


def log_huge_message() -> None:
    _log.info("%s", "y" * 100_000)


def remember_initargs(tag: str) -> None:
    global _initialized_with
    _initialized_with = tag
    _log.info("initialized with %s", tag)


def initialized_with() -> str | None:
    return _initialized_with


def log_to_inherited_logger(name: str) -> int:
    logging.getLogger(name).warning("from a forked worker")
    return os.getpid()


# -- helpers -------------------------------------------------------------------


class ListHandler(logging.Handler):
    """Keeps every record it handles."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]


@pytest.fixture(scope="module", autouse=True)
def _process_machinery() -> None:
    # The forkserver and resource tracker live for the whole session; start
    # them before any leak snapshot so they are not taken for leaks.
    warm_up_process_machinery()


@pytest.fixture
def target() -> Iterator[tuple[logging.Logger, ListHandler]]:
    """A private logger that keeps what reaches it, and stays out of root."""
    logger = logging.getLogger(f"lptest.forwarded.{next(_names)}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = ListHandler()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


@pytest.fixture
def manager_log() -> Iterator[tuple[logging.Logger, ListHandler]]:
    """A private logger for the manager, and what the manager reports there."""
    logger = logging.getLogger(f"lptest.manager.{next(_names)}")
    logger.propagate = False
    reports = ListHandler()
    logger.addHandler(reports)
    yield logger, reports
    logger.removeHandler(reports)


def dropped_total(reports: ListHandler) -> int:
    """Sum the counts of the ``process_logs.dropped`` warnings reported."""
    dropped = [r for r in reports.records if r.msg.startswith("process_logs.dropped")]
    assert all(r.levelno == logging.WARNING for r in dropped)
    return sum(int(r.__dict__["args"][1]) for r in dropped)


@asynccontextmanager
async def forwarding_manager(**kwargs: Any) -> AsyncIterator[LeasedExecutorManager]:
    """A forwarding process manager that must leave nothing behind."""
    kwargs.setdefault("max_pools", 1)
    kwargs.setdefault("workers_per_pool", 1)
    kwargs.setdefault("name_prefix", unique_prefix())
    if "process_logging" not in kwargs:
        kwargs.setdefault("forward_process_logs", True)
    before = snapshot()
    async with LeasedExecutorManager(backend="process", **kwargs) as manager:
        yield manager
    assert not [t for t in threading.enumerate() if t.name == "leasepool-process-logs"]
    await wait_no_leaks(before)


# -- tests ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
async def test_process_logging_forwards_records_at_or_above_level(
    target: tuple[logging.Logger, ListHandler], level: int
) -> None:
    logger, handler = target
    async with (
        forwarding_manager(
            process_log_level=level, process_log_target_logger=logger
        ) as manager,
        await manager.acquire() as lease,
    ):
        pid = await lease.run(log_each_level, "a")
    # stop() has passed on everything the worker logged.
    expected = ["info a", "warning a", "error a"]
    if level == logging.DEBUG:
        expected.insert(0, "debug a")
    assert handler.messages() == expected
    levels = [r.levelno for r in handler.records]
    assert levels == sorted(levels)
    for record in handler.records:
        assert record.name == WORKER_LOGGER
        assert record.process == pid
        assert record.levelname == logging.getLevelName(record.levelno)
        assert record.funcName == "log_each_level"


@pytest.mark.anyio
async def test_process_logging_arrives_while_the_manager_runs(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    async with (
        forwarding_manager(process_log_target_logger=logger) as manager,
        await manager.acquire() as lease,
    ):
        await lease.run(log_message, logging.INFO, "live")
        await wait_until(lambda: "live" in handler.messages())


@pytest.mark.anyio
async def test_process_logging_survives_a_manager_restart(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    before = snapshot()
    manager = LeasedExecutorManager(
        backend="process",
        max_pools=1,
        workers_per_pool=1,
        name_prefix=unique_prefix(),
        forward_process_logs=True,
        process_log_target_logger=logger,
    )
    for run in ("first", "second"):
        async with manager, manager.lease() as lease:
            await lease.run(log_message, logging.INFO, run)
        assert handler.messages()[-1] == run
    await wait_no_leaks(before)


@pytest.mark.anyio
async def test_process_logging_goes_through_parent_levels_and_filters(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    logger.setLevel(logging.WARNING)
    handler.addFilter(lambda record: "secret" not in record.getMessage())
    async with (
        forwarding_manager(
            process_log_level=logging.DEBUG, process_log_target_logger=logger
        ) as manager,
        await manager.acquire() as lease,
    ):
        await lease.run(log_message, logging.INFO, "below the logger level")
        await lease.run(log_message, logging.WARNING, "a secret warning")
        await lease.run(log_message, logging.ERROR, "an error")
    assert handler.messages() == ["an error"]


@pytest.mark.anyio
async def test_process_logging_defaults_to_the_manager_logger(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    async with (
        forwarding_manager(logger=logger) as manager,
        await manager.acquire() as lease,
    ):
        await lease.run(log_message, logging.WARNING, "to the manager's logger")
    assert "to the manager's logger" in handler.messages()


@pytest.mark.anyio
async def test_process_logging_config_object_is_honoured(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    config = ProcessLoggingConfig(
        enabled=True, level=logging.ERROR, target_logger=logger
    )
    async with (
        forwarding_manager(process_logging=config) as manager,
        await manager.acquire() as lease,
    ):
        await lease.run(log_each_level, "c")
    assert handler.messages() == ["error c"]


@pytest.mark.anyio
async def test_process_logging_runs_the_user_initializer_after_forwarding(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    async with (
        forwarding_manager(
            process_log_target_logger=logger,
            initializer=remember_initargs,
            initargs=("tag-1",),
        ) as manager,
        await manager.acquire() as lease,
    ):
        assert await lease.run(initialized_with) == "tag-1"
    assert "initialized with tag-1" in handler.messages()


@pytest.mark.anyio
async def test_process_logging_formats_unpicklable_arguments_in_the_worker(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    async with (
        forwarding_manager(process_log_target_logger=logger) as manager,
        await manager.acquire() as lease,
    ):
        await lease.run(log_unpicklable_argument)
    [record] = handler.records
    assert record.getMessage().startswith("lock=<unlocked _thread.lock object")
    assert not record.args


@pytest.mark.anyio
async def test_process_logging_carries_the_traceback_as_text(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    async with (
        forwarding_manager(process_log_target_logger=logger) as manager,
        await manager.acquire() as lease,
    ):
        await lease.run(log_exception)
    [record] = handler.records
    assert record.exc_info is None
    assert record.exc_text is not None
    assert "ZeroDivisionError" in record.exc_text
    assert "ZeroDivisionError" in logging.Formatter().format(record)


@pytest.mark.anyio
async def test_process_logging_carries_extra_attributes(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    async with (
        forwarding_manager(process_log_target_logger=logger) as manager,
        await manager.acquire() as lease,
    ):
        await lease.run(log_with_extra)
    [record] = handler.records
    assert record.request_id == 7  # type: ignore[attr-defined]
    assert "_thread.lock" in record.holder  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_process_logging_cuts_a_huge_message(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    async with (
        forwarding_manager(process_log_target_logger=logger) as manager,
        await manager.acquire() as lease,
    ):
        await lease.run(log_huge_message)
    [message] = handler.messages()
    assert message.startswith("yyyy")
    assert message.endswith("characters cut]")
    assert len(message) < 40_000


@pytest.mark.anyio
async def test_process_logging_passes_on_everything_logged_before_stop(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    async with (
        forwarding_manager(process_log_target_logger=logger, workers_per_pool=2) as m,
        await m.acquire() as lease,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(lease.run, log_many, "left", 300)
        tg.start_soon(lease.run, log_many, "right", 300)
    messages = handler.messages()
    assert [m for m in messages if m.startswith("left")] == [
        f"left {n}" for n in range(300)
    ]
    assert [m for m in messages if m.startswith("right")] == [
        f"right {n}" for n in range(300)
    ]


@pytest.mark.anyio
async def test_process_logging_works_with_max_tasks_per_child(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    async with (
        forwarding_manager(
            process_log_target_logger=logger, max_tasks_per_child=1
        ) as manager,
        await manager.acquire() as lease,
    ):
        pids = [
            await lease.run(log_message, logging.INFO, f"job {n}") for n in range(3)
        ]
    assert len(set(pids)) == 3
    assert handler.messages() == [f"job {n}" for n in range(3)]
    assert [r.process for r in handler.records] == pids


@pytest.mark.anyio
async def test_process_logging_uses_forkserver_by_default(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("this platform has no forkserver; spawn is the default there")
    logger, handler = target
    async with (
        forwarding_manager(process_log_target_logger=logger) as manager,
        await manager.acquire() as lease,
    ):
        await lease.run(log_message, logging.INFO, "which")
    assert str(handler.records[0].processName).startswith("ForkServerProcess")


@pytest.mark.anyio
async def test_process_logging_keeps_an_explicit_spawn_context(
    target: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    async with (
        forwarding_manager(
            process_log_target_logger=logger,
            mp_context=multiprocessing.get_context("spawn"),
        ) as manager,
        await manager.acquire() as lease,
    ):
        await lease.run(log_message, logging.INFO, "spawned")
    assert str(handler.records[0].processName).startswith("SpawnProcess")


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
@pytest.mark.parametrize("clear", [True, False])
async def test_process_logging_clears_inherited_handlers_when_asked(
    target: tuple[logging.Logger, ListHandler], tmp_path: Path, clear: bool
) -> None:
    # A forked worker inherits the parent's handlers; one that writes a file
    # directly would write every record a second time.
    logger, handler = target
    written = tmp_path / "direct"
    inherited = logging.getLogger(f"lptest.inherited.{next(_names)}")
    direct = logging.FileHandler(written, delay=True)
    inherited.addHandler(direct)
    try:
        async with (
            forwarding_manager(
                process_log_target_logger=logger,
                clear_process_log_handlers=clear,
                mp_context=multiprocessing.get_context("fork"),
            ) as manager,
            await manager.acquire() as lease,
        ):
            await lease.run(log_to_inherited_logger, inherited.name)
    finally:
        inherited.removeHandler(direct)
        direct.close()
    assert handler.messages() == ["from a forked worker"]
    direct_lines = written.read_text().splitlines() if written.exists() else []
    assert direct_lines == ([] if clear else ["from a forked worker"])


@pytest.mark.anyio
async def test_process_logging_drops_and_counts_instead_of_blocking_a_worker(
    target: tuple[logging.Logger, ListHandler],
    manager_log: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = target
    manager_logger, reports = manager_log
    # The parent's handler stalls, so the pipe fills and stays full.
    release = threading.Event()
    handler.addFilter(lambda record: release.wait(PATIENCE * 2))
    try:
        async with (
            forwarding_manager(
                process_log_target_logger=logger, logger=manager_logger
            ) as manager,
            await manager.acquire() as lease,
        ):
            with anyio.fail_after(PATIENCE):
                assert await lease.run(log_flood, 5000) == 5000
            release.set()
            # The next record that gets through reports what was dropped;
            # until the listener has caught up, those are dropped too.
            sent = 0
            with anyio.fail_after(PATIENCE):
                while not any(m.startswith("after") for m in handler.messages()):
                    await lease.run(log_message, logging.INFO, f"after {sent}")
                    sent += 1
                    await anyio.sleep(0.02)
    finally:
        release.set()
    assert dropped_total(reports) + len(handler.records) == 5000 + sent


@pytest.mark.anyio
async def test_process_logging_slow_parent_costs_a_worker_one_short_wait(
    target: tuple[logging.Logger, ListHandler],
    manager_log: tuple[logging.Logger, ListHandler],
) -> None:
    # A parent handler that keeps up, slowly (a remote log shipper, say),
    # frees room in the pipe one record at a time. The worker's waits for
    # that room are bounded in all, not each: past half a second it drops.
    logger, handler = target
    manager_logger, reports = manager_log

    def slowly(record: logging.LogRecord) -> bool:
        time.sleep(0.005)
        return True

    handler.addFilter(slowly)
    count = 3000  # over 15 s at the handler's pace
    async with (
        forwarding_manager(
            process_log_target_logger=logger, logger=manager_logger
        ) as manager,
        await manager.acquire() as lease,
    ):
        with anyio.fail_after(PATIENCE):
            spent = await lease.run(log_flood_timed, count)
    # A generous bound for the half-second budget, far below the pace of
    # the handler.
    assert spent < 5.0
    # Records dropped at the end of the flood are counted when the worker
    # exits, so every record is either delivered or counted.
    total = dropped_total(reports)
    assert total > 0
    assert total + len(handler.records) == count


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"enabled": "yes"}, "enabled must be True or False, got 'yes'"),
        ({"level": -1}, "level must be a logging level"),
        ({"level": "INFO"}, "level must be a logging level"),
        ({"target_logger": "app"}, "target_logger must be a logging.Logger"),
        ({"clear_child_handlers": 1}, "clear_child_handlers must be True or False"),
    ],
)
def test_process_logging_config_rejects_bad_values(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ProcessLoggingConfig(**options)


def test_process_logging_encoded_record_always_rebuilds() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    record = logging.LogRecord(
        "n", logging.INFO, __file__, 1, "%s and %d", (Opaque(), 3), None
    )
    record.nested = {"a": [Opaque(), 1, (2, "x")]}
    import pickle

    fields = pickle.loads(encode_record(record))
    rebuilt = logging.makeLogRecord(fields)
    assert rebuilt.getMessage() == "<opaque> and 3"
    assert rebuilt.nested == {"a": ["<opaque>", 1, (2, "x")]}  # type: ignore[attr-defined]
