"""Soak test: a random mixed workload on one manager (and grinder) for a while.

Usage::

    python scripts/soak.py --runtime asyncio --seconds 60
    python scripts/soak.py --runtime trio --seconds 60 --seed 7
    python scripts/soak.py --runtime uvloop --backend process --seconds 30

Dozens of tasks pick operations at random until the time is up: acquire in all
its forms (waiting, ``wait=False``, timeouts, cancelled while waiting), runs and
proxy submits (from the loop and from other threads), leases too short for
their work (revoked mid-job), cancelled runs, grinder calls (some cancelled),
size-signal changes, and now and then a stop and restart of the whole manager
under everyone's feet. A checker samples the invariants every few
milliseconds:

* ``available + leased == total <= max_pools``, ``peak_pools <= max_pools``;
* never idle pools while callers wait;
* never more live leases than ``max_pools``;
* never more pool worker threads alive than ``max_pools * workers_per_pool``
  (thread backend), nor worker processes (process backend);

and every operation must end within a bound with a result it expects or an
error it allows (a hang or a surprise is a violation). At the end the manager
is stopped and nothing of it may be left: thread, child process or task.

Prints the operations completed (by kind and outcome) and the violations, and
exits with status 1 if there was any violation.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import itertools
import logging
import math
import multiprocessing
import random
import re
import sys
import threading
import time
import warnings
from typing import Any

import anyio
import anyio.lowlevel

from leasepool import (
    ExecutorLease,
    GrinderFullError,
    LeasedExecutorManager,
    LeaseExpiredError,
    LeasePoolNotStartedError,
    LeaseUnavailableError,
    WorkGrinder,
)

OP_BOUND = 30.0  # seconds any one operation may take before it counts as a hang
MAX_POOLS = 4
WORKERS = 2
PREFIX = "lpsoak"
_pool_thread = re.compile(rf"^{PREFIX}-\d+_\d+$")


def work(seconds: float, value: int) -> int:
    """The job: sleep a little (a blocking call), then return ``value``."""
    time.sleep(seconds)
    return value


class Soak:
    """The workload, its bookkeeping and its checks."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.signal: float = 0
        self.ops: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []
        self.live: set[ExecutorLease] = set()
        self.values = itertools.count()
        self.manager = LeasedExecutorManager(
            backend=args.backend,
            max_pools=MAX_POOLS,
            min_pools=1,
            workers_per_pool=WORKERS,
            units_per_pool=5,
            size_provider=lambda: self.signal,
            check_interval=0.5,
            default_lease_seconds=2.0,
            lease_grace_seconds=0.05,
            name_prefix=PREFIX,
        )
        self.grinder = WorkGrinder(
            executor_manager=self.manager,
            max_wait_seconds=0.05,
            batch_size_threshold=10,
            lease_seconds=5.0,  # a batch, process start-up included
            owner_prefix=f"{PREFIX}-grinder",
        )
        self.restarting = False
        self.peak_workers = 0

    def violation(self, what: str) -> None:
        if len(self.violations) < 1000:
            self.violations.append(what)

    def done(self, kind: str, outcome: str) -> None:
        self.ops[f"{kind}:{outcome}"] += 1

    # -- operations ----------------------------------------------------------

    async def op_acquire_run(self) -> str:
        mode = self.rng.choice(["wait", "nowait", "timeout", "scope"])
        m = self.manager
        if mode == "nowait":
            lease = await m.acquire(wait=False, owner="nowait")
        elif mode == "timeout":
            try:
                lease = await m.acquire(timeout=self.rng.uniform(0, 0.05))
            except TimeoutError:
                return "timed-out"
        elif mode == "scope":
            with anyio.move_on_after(self.rng.uniform(0, 0.05)):
                lease = await m.acquire()
                return await self._use(lease)
            return "moved-on"
        else:
            lease = await m.acquire(owner="waiter")
        return await self._use(lease)

    async def _use(self, lease: ExecutorLease) -> str:
        self.live.add(lease)
        try:
            for _ in range(self.rng.randint(1, 3)):
                value = next(self.values)
                got = await lease.run(work, self.rng.uniform(0, 0.01), value)
                if got != value:
                    self.violation(f"run returned {got!r}, not {value!r}")
            if self.rng.random() < 0.3:
                value = next(self.values)
                fut = await anyio.to_thread.run_sync(
                    lease.executor.submit, work, 0.0, value
                )
                got = await anyio.to_thread.run_sync(fut.result, OP_BOUND)
                if got != value:
                    self.violation(f"submit returned {got!r}, not {value!r}")
        finally:
            self.live.discard(lease)
            how = self.rng.choice(["lease", "manager", "twice"])
            if how == "manager":
                await self.manager.release(lease.lease_id)
            else:
                await lease.release()
                if how == "twice":
                    await lease.release()
        return "ok"

    async def op_short_lease(self) -> str:
        lease = await self.manager.acquire(lease_seconds=self.rng.uniform(0.01, 0.05))
        self.live.add(lease)
        try:
            value = next(self.values)
            # Longer than the lease: revoked mid-job. A thread finishes its
            # job anyway; later submits must be refused.
            try:
                got = await lease.run(work, 0.15, value)
            except LeaseExpiredError:
                if lease.active:
                    raise
                return "revoked-before-use"  # the loop was slow to hand it over
            except cf.BrokenExecutor:
                # A process pool is killed on revocation: its job fails, clearly.
                if self.args.backend != "process" or lease.active:
                    raise
                return "revoked-killed"
            if got != value:
                self.violation(f"revoked run returned {got!r}, not {value!r}")
            if lease.active:
                return "outlived"  # only if the loop was too busy to revoke yet
            try:
                await lease.run(work, 0.0, 0)
            except LeaseExpiredError:
                return "revoked"
            self.violation(f"{lease!r} took work after revocation")
            return "bad"
        finally:
            self.live.discard(lease)
            await lease.release()

    async def op_cancel_run(self) -> str:
        async with await self.manager.acquire() as lease:
            with anyio.move_on_after(self.rng.uniform(0, 0.02)) as scope:
                await lease.run(work, 0.05, 0)
            return "cancelled" if scope.cancelled_caught else "finished"

    async def op_grinder(self) -> str:
        g = self.grinder
        if self.rng.random() < 0.5:
            value = next(self.values)
            got = await g.submit(work, self.rng.uniform(0, 0.005), value)
            if got != value:
                self.violation(f"grinder.submit returned {got!r}, not {value!r}")
            return "submitted"
        handles = [await g.enqueue(work, 0.0, n) for n in range(5)]
        if self.rng.random() < 0.5:
            handles[-1].cancel()
        for n, handle in enumerate(handles):
            try:
                got = await handle
            except cf.CancelledError:
                if n != len(handles) - 1 and not self.restarting:
                    self.violation("a grinder call nobody cancelled was cancelled")
                continue
            if got != n:
                self.violation(f"grinder handle returned {got!r}, not {n!r}")
        return "enqueued"

    async def op_signal(self) -> str:
        self.signal = self.rng.choice([0, 1, 5, 12, 40, -3, math.nan])
        if self.rng.random() < 0.5:
            self.manager.notify_scale_changed()
        else:
            await anyio.to_thread.run_sync(self.manager.notify_scale_changed)
        return "ok"

    # -- tasks ---------------------------------------------------------------

    async def worker(self, deadline: float) -> None:
        kinds = [
            (self.op_acquire_run, 6),
            (self.op_short_lease, 1),
            (self.op_cancel_run, 2),
            (self.op_grinder, 3),
            (self.op_signal, 1),
        ]
        ops = [op for op, weight in kinds for _ in range(weight)]
        while anyio.current_time() < deadline:
            op = self.rng.choice(ops)
            kind = op.__name__.removeprefix("op_")
            try:
                with anyio.fail_after(OP_BOUND):
                    outcome = await op()
            except TimeoutError:
                outcome = "hung"
                self.violation(f"{kind} hung for {OP_BOUND}s")
            except LeaseUnavailableError:
                outcome = "unavailable"
            except (LeasePoolNotStartedError, LeaseExpiredError) as exc:
                outcome = type(exc).__name__
                if not self.restarting:
                    self.violation(f"{kind}: {exc!r} while the manager ran")
                await anyio.sleep(0.01)  # a restart is under way: let it be
            except GrinderFullError:
                outcome = "full"
            except cf.CancelledError:
                # Only stop(cancel_pending=True), during a restart, cancels
                # grinder calls here.
                outcome = "cancelled-by-stop"
                if not self.restarting:
                    self.violation(f"{kind}: a call was cancelled by nobody")
            except Exception as exc:
                outcome = "error"
                self.violation(f"{kind} raised {exc!r}")
            self.done(kind, outcome)
            await anyio.lowlevel.checkpoint()

    def check(self) -> None:
        s = self.manager.stats()
        if not s["available"] + s["leased"] == s["total"] <= MAX_POOLS:
            self.violation(f"pool counts: {s}")
        if s["peak_pools"] > MAX_POOLS:
            self.violation(f"peak_pools {s['peak_pools']}")
        if s["available"] and s["waiting"]:
            self.violation(f"idle pools while callers wait: {s}")
        live = [lease for lease in self.live if lease.active]
        if len(live) > MAX_POOLS:
            self.violation(f"{len(live)} live leases")
        if self.args.backend == "thread":
            threads = [t for t in threading.enumerate() if _pool_thread.match(t.name)]
            self.peak_workers = max(self.peak_workers, len(threads))
            if len(threads) > MAX_POOLS * WORKERS:
                self.violation(f"{len(threads)} pool threads alive at once")
        else:
            children = multiprocessing.active_children()
            self.peak_workers = max(self.peak_workers, len(children))
            if len(children) > MAX_POOLS * WORKERS:
                self.violation(f"{len(children)} worker processes alive at once")

    async def checker(self) -> None:
        while not self.finished.is_set():
            self.check()
            self.ops["checks"] += 1
            await anyio.sleep(0.005)

    async def chaos(self, deadline: float) -> None:
        """Stop and restart everything now and then, under everyone's feet."""
        while True:
            with anyio.move_on_after(self.rng.uniform(5, 15)):
                await self.finished.wait()
            if self.finished.is_set() or anyio.current_time() >= deadline:
                return
            self.restarting = True
            with anyio.fail_after(OP_BOUND):
                await self.grinder.stop(cancel_pending=self.rng.random() < 0.5)
                await self.manager.stop()
                self.check()
                await self.manager.start()
                await self.grinder.start()
            self.ops["restarts"] += 1
            # Operations that began before the restart may still end with
            # "not started" or "expired": allow them a moment.
            await anyio.sleep(1.0)
            self.restarting = False
        self.peak_workers = 0

    async def run(self) -> None:
        started = anyio.current_time()
        deadline = started + self.args.seconds
        self.finished = anyio.Event()
        async with self.manager, self.grinder:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.checker)
                tg.start_soon(self.chaos, deadline)
                try:
                    with anyio.fail_after(self.args.seconds + OP_BOUND * 2):
                        async with anyio.create_task_group() as workers:
                            for _ in range(self.args.tasks):
                                workers.start_soon(self.worker, deadline)
                except TimeoutError:
                    self.violation("workers did not finish within the bound")
                self.finished.set()
            self.stats = self.manager.stats()
            self.grinder_stats = self.grinder.stats()
        left = [t.name for t in threading.enumerate() if t.name.startswith(PREFIX)]
        if left:
            self.violation(f"threads left after stop(): {left}")
        children = multiprocessing.active_children()
        if children:
            self.violation(f"child processes left after stop(): {children}")
        self.elapsed = anyio.current_time() - started


class _ErrorLogged(logging.Handler):
    """Count every ERROR record (a loop callback that raised, say) as a violation."""

    def __init__(self, soak: Soak) -> None:
        super().__init__(logging.ERROR)
        self.soak = soak

    def emit(self, record: logging.LogRecord) -> None:
        cause = f" ({record.exc_info[1]!r})" if record.exc_info else ""
        self.soak.violation(
            f"logged {record.levelname} by {record.name}: "
            f"{record.getMessage()[:160]}{cause}"
        )


def watch_for_hidden_errors(soak: Soak) -> None:
    """Turn errors that would only be printed into violations.

    Errors in event-loop callbacks are only logged by asyncio, exceptions in
    ``__del__`` or of never-awaited coroutines only reach the unraisable hook,
    and warnings only get printed: none of them reaches a caller.
    """
    # Revocations and grace periods log warnings by design: not violations.
    logging.getLogger("leasepool").setLevel(logging.ERROR)
    logging.getLogger().addHandler(_ErrorLogged(soak))

    def unraisable(info: Any) -> None:
        soak.violation(f"unraisable {info.exc_value!r} in {info.object!r}")

    sys.unraisablehook = unraisable

    def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        soak.violation(f"{category.__name__}: {message}")

    warnings.simplefilter("always")
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runtime", choices=["asyncio", "trio", "uvloop"], default="asyncio"
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--backend", choices=["thread", "process"], default="thread")
    parser.add_argument("--tasks", type=int, default=32, help="concurrent workers")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(2**32)
    soak = Soak(args)
    watch_for_hidden_errors(soak)
    backend = "trio" if args.runtime == "trio" else "asyncio"
    options = {"use_uvloop": True} if args.runtime == "uvloop" else {}
    try:
        anyio.run(soak.run, backend=backend, backend_options=options)
    except BaseException as exc:  # the run itself died: report, then fail
        soak.violation(f"the event loop run died: {exc!r}")
        soak.elapsed = float(args.seconds)
        soak.stats = soak.manager.stats()
        soak.grinder_stats = soak.grinder.stats()

    ops = {k: v for k, v in soak.ops.items() if k not in ("checks", "restarts")}
    total = sum(ops.values())
    print(
        f"soak: runtime={args.runtime} backend={args.backend} seed={args.seed} "
        f"seconds={soak.elapsed:.1f} tasks={args.tasks}"
    )
    print(f"operations completed: {total} ({total / soak.elapsed:.0f}/s)")
    for key in sorted(ops):
        print(f"  {key:32} {ops[key]}")
    print(
        f"invariant checks: {soak.ops['checks']}, restarts: {soak.ops['restarts']}, "
        f"peak workers alive: {soak.peak_workers} (bound {MAX_POOLS * WORKERS})"
    )
    s = soak.stats
    print(
        "manager: leases granted={leases_granted} released={leases_released} "
        "revoked={leases_revoked} waited={leases_waited} "
        "pools retired={pools_retired} peak pools={peak_pools}".format(**s)
    )
    g = soak.grinder_stats
    print(
        "grinder: batches={batches} submitted={submitted} completed={completed} "
        "failed={failed} cancelled={cancelled}".format(**g)
    )
    print(f"invariant violations: {len(soak.violations)}")
    for violation in soak.violations[:20]:
        print(f"  {violation}")
    return 1 if soak.violations else 0


if __name__ == "__main__":
    sys.exit(main())
