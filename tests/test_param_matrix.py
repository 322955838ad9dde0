"""Every public parameter, tried with wrong types and values.

Each parameter has a *kind* (a positive integer, a duration, a flag, a name…)
that says which of the probe values it accepts. A value it refuses must raise
``ValueError`` (``TypeError`` where Python itself would, e.g. a non-callable
job) whose message names the argument and shows the value, and must leave
nothing behind: no thread, no child process, no fd, no lease or waiter. A value
it accepts must work.

Known core bugs are marked ``xfail(strict=True)`` case by case, each with the
reason, so that a fix shows up as an XPASS that fails the run until the mark
is removed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from _leakcheck import find_leaks, snapshot, task_count
from leasepool import (
    LeasedExecutorManager,
    ProcessLoggingConfig,
    WorkGrinder,
)

HUGE_INT = 10**400  # an int, but far beyond float's range
PROBES: dict[str, Any] = {
    "None": None,
    "True": True,
    "False": False,
    "str": "2",
    "empty_str": "",
    "float": 1.5,
    "nan": math.nan,
    "inf": math.inf,
    "negative": -1,
    "zero": 0,
    "huge_int": HUGE_INT,
    "huge_float": 1e308,
}


def _number(value: Any) -> bool:
    return type(value) is not bool and isinstance(value, int | float)


def _in_float_range(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def pos_int(value: Any) -> bool:
    return type(value) is int and value > 0


def opt_pos_int(value: Any) -> bool:
    return value is None or pos_int(value)


def duration(value: Any) -> bool:
    return _number(value) and _in_float_range(value) and value > 0


def duration_or_zero(value: Any) -> bool:
    return _number(value) and _in_float_range(value) and value >= 0


def opt_duration_or_zero(value: Any) -> bool:
    return value is None or duration_or_zero(value)


def opt_duration(value: Any) -> bool:
    return value is None or duration(value)


def flag(value: Any) -> bool:
    return type(value) is bool


def name(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def opt_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def opt_logger(value: Any) -> bool:
    return value is None  # no probe is a Logger


def opt_callable(value: Any) -> bool:
    return value is None or callable(value)


def level(value: Any) -> bool:
    return type(value) is int and value >= 0


def backend_name(value: Any) -> bool:
    return isinstance(value, str) and value.lower() in ("thread", "process")


def cases(
    params: dict[str, Callable[[Any], bool]],
    marks: dict[tuple[str, str], pytest.MarkDecorator] | None = None,
) -> Iterator[Any]:
    """Yield one pytest.param per (parameter, probe), with expected outcome."""
    for param, accepts in params.items():
        for probe, value in PROBES.items():
            mark = (marks or {}).get((param, probe))
            yield pytest.param(
                param,
                value,
                accepts(value),
                id=f"{param}-{probe}",
                marks=[mark] if mark else [],
            )


def check_refusal(exc: BaseException, param: str, value: Any) -> None:
    """The error names the argument and shows the value."""
    message = str(exc)
    assert param in message, f"{param!r} not named in {message!r}"
    assert repr(value) in message, f"{value!r} not shown in {message!r}"


# -- LeasedExecutorManager(...) --------------------------------------------------------

MANAGER_PARAMS: dict[str, Callable[[Any], bool]] = {
    "backend": backend_name,
    "max_pools": pos_int,
    "min_pools": lambda v: pos_int(v) and v <= 2,  # max_pools is 2 here
    "units_per_pool": pos_int,
    "size_provider": opt_callable,
    "check_interval": duration,
    "default_lease_seconds": duration,
    "lease_grace_seconds": duration_or_zero,
    "workers_per_pool": pos_int,
    "name_prefix": name,
    "logger": opt_logger,
    "process_logging": lambda v: v is None,
    "forward_process_logs": flag,
    "process_log_level": level,
    "process_log_target_logger": opt_logger,
    "clear_process_log_handlers": flag,
}
MANAGER_MARKS: dict[tuple[str, str], pytest.MarkDecorator] = {}


def manager_kwargs(param: str, value: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_pools": 2, "name_prefix": "lpmatrix"}
    if param.startswith(("process_log", "forward_process", "clear_process")):
        # The shortcuts belong to the process backend (constructing one starts
        # nothing), and each may differ from its default only with the others.
        kwargs["backend"] = "process"
        if param != "forward_process_logs":
            kwargs["forward_process_logs"] = True
    if param == "max_pools":
        kwargs.pop("max_pools")
    kwargs[param] = value
    return kwargs


@pytest.mark.parametrize(
    ("param", "value", "accepted"), list(cases(MANAGER_PARAMS, MANAGER_MARKS))
)
def test_manager_constructor_param(param: str, value: Any, accepted: bool) -> None:
    before = snapshot()
    kwargs = manager_kwargs(param, value)
    if not accepted:
        with pytest.raises(ValueError, match=param) as info:
            LeasedExecutorManager(**kwargs)
        check_refusal(info.value, param, value)
        assert not find_leaks(before)
        return
    manager = LeasedExecutorManager(**kwargs)
    assert not find_leaks(before), "the constructor started something"
    if kwargs.get("backend", "thread").lower() == "thread":
        # An accepted value must also work: start, lease, run, stop.
        anyio.run(_smoke, manager)
    assert not find_leaks(before)


async def _smoke(manager: LeasedExecutorManager) -> None:
    with anyio.fail_after(30):
        async with manager, await manager.acquire() as lease:
            assert await lease.run(pow, 2, 5) == 32


def test_manager_min_pools_above_max_pools_names_both() -> None:
    with pytest.raises(ValueError, match="min_pools") as info:
        LeasedExecutorManager(max_pools=2, min_pools=3)
    assert "3" in str(info.value)
    assert "max_pools" in str(info.value)


def test_manager_unknown_backend_lists_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="backend") as info:
        LeasedExecutorManager(max_pools=1, backend="threads")
    for supported in ("thread", "process", "interpreter"):
        assert supported in str(info.value)


@pytest.mark.parametrize(
    "executor_kwargs",
    [
        pytest.param({"max_workers": 3}, id="reserved-max_workers"),
        pytest.param({"thread_name_prefix": "x"}, id="reserved-thread_name_prefix"),
        pytest.param({"no_such_option": 1}, id="unknown"),
        pytest.param({"initializer": "not callable"}, id="initializer-str"),
    ],
)
def test_manager_thread_executor_kwargs_refused_at_construction(
    executor_kwargs: dict[str, Any],
) -> None:
    before = snapshot()
    (key,) = executor_kwargs
    with pytest.raises(ValueError, match=key):
        LeasedExecutorManager(max_pools=1, **executor_kwargs)
    assert not find_leaks(before)


@pytest.mark.parametrize(
    "executor_kwargs",
    [
        pytest.param({"max_workers": 3}, id="reserved-max_workers"),
        pytest.param({"no_such_option": 1}, id="unknown"),
        pytest.param({"initializer": "not callable"}, id="initializer-str"),
        pytest.param({"max_tasks_per_child": "x"}, id="max_tasks_per_child-str"),
        pytest.param({"max_tasks_per_child": 0}, id="max_tasks_per_child-zero"),
        pytest.param({"mp_context": "spawn"}, id="mp_context-str"),
    ],
)
def test_manager_process_executor_kwargs_refused_at_construction(
    executor_kwargs: dict[str, Any],
) -> None:
    before = snapshot()
    (key,) = executor_kwargs
    with pytest.raises(ValueError, match=key):
        LeasedExecutorManager(max_pools=1, backend="process", **executor_kwargs)
    assert not find_leaks(before)


# -- ProcessLoggingConfig(...) ---------------------------------------------------------

CONFIG_PARAMS: dict[str, Callable[[Any], bool]] = {
    "enabled": flag,
    "level": level,
    "target_logger": opt_logger,
    "clear_child_handlers": flag,
}


@pytest.mark.parametrize(("param", "value", "accepted"), list(cases(CONFIG_PARAMS)))
def test_process_logging_config_param(param: str, value: Any, accepted: bool) -> None:
    if accepted:
        assert getattr(ProcessLoggingConfig(**{param: value}), param) is value
        return
    with pytest.raises(ValueError, match=param) as info:
        ProcessLoggingConfig(**{param: value})
    check_refusal(info.value, param, value)


# -- acquire(...) and acquire_nowait(...) ----------------------------------------------

ACQUIRE_PARAMS: dict[str, Callable[[Any], bool]] = {
    "lease_seconds": opt_duration,
    "owner": opt_str,
    "wait": flag,
    "timeout": opt_duration_or_zero,
}


@pytest.mark.anyio
@pytest.mark.parametrize(("param", "value", "accepted"), list(cases(ACQUIRE_PARAMS)))
async def test_manager_acquire_param(param: str, value: Any, accepted: bool) -> None:
    manager = LeasedExecutorManager(max_pools=1, name_prefix="lpmatrixacq")
    with anyio.fail_after(30):
        async with manager:
            before = manager.stats()
            if not accepted:
                with pytest.raises(ValueError, match=param) as info:
                    await manager.acquire(**{param: value})
                check_refusal(info.value, param, value)
                after = manager.stats()
                for key in ("leases_granted", "leases_waited", "waiting", "leased"):
                    assert after[key] == before[key], key
                if param in ("lease_seconds", "owner"):
                    with pytest.raises(ValueError, match=param) as info:
                        manager.acquire_nowait(**{param: value})
                    check_refusal(info.value, param, value)
                return
            async with await manager.acquire(**{param: value}) as lease:
                assert await lease.run(pow, 3, 2) == 9
            if param in ("lease_seconds", "owner"):
                async with manager.acquire_nowait(**{param: value}) as lease:
                    assert await lease.run(pow, 2, 2) == 4


# -- release(lease_id) -----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    # Strings are lease ids (unknown ones are ignored): not probed here.
    "probe",
    ["lease_object", "None", "True", "float", "huge_int"],
)
async def test_manager_release_refuses_what_is_not_a_lease_id(probe: str) -> None:
    manager = LeasedExecutorManager(max_pools=1, name_prefix="lpmatrixrel")
    with anyio.fail_after(30):
        async with manager:
            lease = await manager.acquire()
            value: Any = lease if probe == "lease_object" else PROBES[probe]
            try:
                await manager.release(value)
            except ValueError as exc:
                check_refusal(exc, "lease_id", value)
            else:
                assert not lease.active, f"release({value!r}) did nothing"


@pytest.mark.anyio
async def test_manager_release_unknown_id_is_ignored() -> None:
    async with LeasedExecutorManager(max_pools=1, name_prefix="lpmatrixrel") as m:
        lease = await m.acquire()
        await m.release("no-such-lease")
        await m.release("")
        assert lease.active
        await m.release(lease.lease_id)
        assert not lease.active


# -- ExecutorLease.run(fn) and lease.executor.submit(fn) -------------------------------

NOT_CALLABLE = {k: v for k, v in PROBES.items() if not callable(v)}


@pytest.mark.anyio
@pytest.mark.parametrize("probe", list(NOT_CALLABLE))
async def test_lease_run_non_callable_fails_and_pool_survives(probe: str) -> None:
    value = NOT_CALLABLE[probe]
    manager = LeasedExecutorManager(
        max_pools=1, workers_per_pool=1, name_prefix="lpmatrixrun"
    )
    with anyio.fail_after(30):
        async with manager, await manager.acquire() as lease:
            with pytest.raises(TypeError):
                await lease.run(value)
            try:
                future = lease.executor.submit(value)
            except (TypeError, ValueError):
                pass
            else:
                with pytest.raises(TypeError):
                    future.result(timeout=30)
            assert await lease.run(pow, 2, 3) == 8
            assert lease.active
            assert manager.stats()["pools_retired"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize("via", ["run", "submit"])
async def test_lease_non_callable_error_names_fn(via: str) -> None:
    manager = LeasedExecutorManager(max_pools=1, name_prefix="lpmatrixrun")
    with anyio.fail_after(30):
        async with manager, await manager.acquire() as lease:
            if via == "run":
                with pytest.raises((TypeError, ValueError)) as info:
                    await lease.run(None)  # type: ignore[arg-type]  # on purpose
            else:
                with pytest.raises((TypeError, ValueError)) as info:
                    lease.executor.submit(None)  # type: ignore[arg-type]  # ditto
            check_refusal(info.value, "fn", None)


# -- WorkGrinder(...) and its methods --------------------------------------------------

GRINDER_PARAMS: dict[str, Callable[[Any], bool]] = {
    "executor_manager": lambda v: False,  # no probe is a manager
    "max_wait_seconds": duration,
    "batch_size_threshold": pos_int,
    "lease_seconds": duration,
    "owner_prefix": name,
    "logger": opt_logger,
    "max_concurrent_batches": pos_int,
    "max_pending": opt_pos_int,
}


@pytest.mark.parametrize(("param", "value", "accepted"), list(cases(GRINDER_PARAMS)))
def test_grinder_constructor_param(param: str, value: Any, accepted: bool) -> None:
    before = snapshot()
    manager = LeasedExecutorManager(max_pools=1, name_prefix="lpmatrixgr")
    kwargs: dict[str, Any] = {"executor_manager": manager, param: value}
    if not accepted:
        with pytest.raises(ValueError, match=param) as info:
            WorkGrinder(**kwargs)
        check_refusal(info.value, param, value)
        assert not find_leaks(before)
        return
    grinder = WorkGrinder(**kwargs)
    assert not find_leaks(before), "the constructor started something"
    anyio.run(_grinder_smoke, manager, grinder)
    assert not find_leaks(before)


async def _grinder_smoke(manager: LeasedExecutorManager, grinder: WorkGrinder) -> None:
    with anyio.fail_after(30):
        async with manager, grinder:
            handle = await grinder.enqueue(pow, 2, 4)
            await grinder.stop()  # drains: runs the queued call now
            assert handle.result() == 16


@pytest.mark.anyio
async def test_grinder_lanes_bounded_by_manager_pools() -> None:
    manager = LeasedExecutorManager(max_pools=2, name_prefix="lpmatrixgl")
    grinder = WorkGrinder(
        executor_manager=manager, max_concurrent_batches=5_000, max_wait_seconds=0.01
    )
    async with manager:
        tasks_before = task_count()
        await grinder.start()
        try:
            assert task_count() - tasks_before <= 2 + 2  # lanes, plus their parent
            assert await grinder.submit(pow, 2, 2) == 4
        finally:
            await grinder.stop()


GRINDER_CALL_PARAMS: dict[str, Callable[[Any], bool]] = {
    "owner": opt_str,
    "wait": flag,
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("param", "value", "accepted"), list(cases(GRINDER_CALL_PARAMS))
)
async def test_grinder_enqueue_param(param: str, value: Any, accepted: bool) -> None:
    manager = LeasedExecutorManager(max_pools=1, name_prefix="lpmatrixgq")
    grinder = WorkGrinder(
        executor_manager=manager, max_wait_seconds=0.01, batch_size_threshold=1
    )
    with anyio.fail_after(30):
        async with manager, grinder:
            if not accepted:
                for method in (grinder.enqueue, grinder.submit):
                    with pytest.raises(ValueError, match=param) as info:
                        await method(pow, 2, 2, **{param: value})
                    check_refusal(info.value, param, value)
                assert grinder.stats()["pending"] == 0
                assert grinder.stats()["submitted"] == 0
                return
            assert await grinder.submit(pow, 2, 2, **{param: value}) == 4
            handle = await grinder.enqueue(pow, 2, 3, **{param: value})
            assert await handle == 8


@pytest.mark.anyio
@pytest.mark.parametrize("probe", list(NOT_CALLABLE))
async def test_grinder_submit_non_callable_refused(probe: str) -> None:
    value = NOT_CALLABLE[probe]
    manager = LeasedExecutorManager(max_pools=1, name_prefix="lpmatrixgc")
    grinder = WorkGrinder(executor_manager=manager, max_wait_seconds=0.01)
    with anyio.fail_after(30):
        async with manager, grinder:
            for method in (grinder.enqueue, grinder.submit):
                with pytest.raises((TypeError, ValueError)) as info:
                    await method(value)
                check_refusal(info.value, "fn", value)
            assert grinder.stats()["submitted"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("param", "value", "accepted"), list(cases({"cancel_pending": flag}))
)
async def test_grinder_stop_param(param: str, value: Any, accepted: bool) -> None:
    manager = LeasedExecutorManager(max_pools=1, name_prefix="lpmatrixgs")
    grinder = WorkGrinder(executor_manager=manager)
    with anyio.fail_after(30):
        async with manager:
            await grinder.start()
            if not accepted:
                with pytest.raises(ValueError, match=param) as info:
                    await grinder.stop(**{param: value})
                check_refusal(info.value, param, value)
                assert grinder.started, "a refused stop() half-stopped the grinder"
            await grinder.stop(cancel_pending=value if accepted else False)
            assert not grinder.started


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("param", "value", "accepted"),
    list(cases({"timeout": opt_duration_or_zero})),
)
async def test_grinder_stats_from_thread_param(
    param: str, value: Any, accepted: bool
) -> None:
    manager = LeasedExecutorManager(max_pools=1, name_prefix="lpmatrixgt")
    grinder = WorkGrinder(executor_manager=manager)
    outcome: list[Any] = []

    def from_thread() -> None:
        try:
            outcome.append(grinder.stats_from_thread(**{param: value}))
        except Exception as exc:
            outcome.append(exc)

    with anyio.fail_after(30):
        async with manager, grinder:
            await anyio.to_thread.run_sync(from_thread)
    (result,) = outcome
    if isinstance(result, OverflowError):
        raise result
    if accepted and value == 0 and isinstance(result, TimeoutError):
        return  # no time at all to answer: a timeout is the honest outcome
    if accepted:
        assert isinstance(result, dict), result
        assert result["started"] is True
    else:
        assert isinstance(result, ValueError), result
        check_refusal(result, param, value)
