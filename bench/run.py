"""Benchmark leasepool against its anchors and its predecessor (issue 5).

Run it through ``bash bench/run.sh`` (which builds the two virtual
environments first), or directly with an interpreter that has anyio and trio:
``python bench/run.py --quick``. See ``bench/README.md``.

The parent process only plans, collects and reports. Measurements run in two
long-lived worker processes (``_worker.py``), one per virtual environment,
because the project and ``leasepool==0.1.3`` share the import name. Requests go
one at a time, repetitions are interleaved across contenders (rep 1 of every
contender, then rep 2, ...), so that slow drifts of the machine hit all of them
alike; the table shows medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import queue
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DEFAULT_PREDECESSOR = ROOT / ".bench-venvs" / "predecessor" / "bin" / "python"
KEEP_START = "<!-- keep: text between these markers survives a rerun -->"
KEEP_END = "<!-- /keep -->"
SCENARIOS = ("call", "acquire", "grinder", "process")
RUNTIMES = ("asyncio", "trio")

# Contenders, keyed by the name the worker understands, with their table names.
NAMES = {
    "leasepool": "leasepool (this)",
    "predecessor": "leasepool 0.1.3",
    "raw_executor": "loop.run_in_executor",
    "anyio_thread": "anyio.to_thread",
    "trio_thread": "trio.to_thread",
    "anyio_limiter": "anyio.CapacityLimiter",
    "anyio_direct": "anyio.to_thread direct",
    "raw_pool": "raw ProcessPoolExecutor",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Sizes:
    """Workload sizes; ``full`` follows issue 5, ``quick`` is a smoke run."""

    reps: int
    grinder_reps: int
    process_reps: int
    calls_1: int
    calls_64: int
    pairs: int
    waiters: int
    probe_releases: int
    grinder_jobs: int
    grinder_tasks: int
    process_jobs: int
    case_timeout: float


FULL = Sizes(
    reps=9,
    grinder_reps=5,
    process_reps=31,  # the noisiest scenario: 2 workers on 2 cores
    calls_1=4_000,
    calls_64=12_800,
    pairs=20_000,
    waiters=1_000,
    probe_releases=20,
    grinder_jobs=100_000,
    grinder_tasks=1_000,
    process_jobs=2_000,
    case_timeout=300.0,
)
QUICK = Sizes(
    reps=2,
    grinder_reps=2,
    process_reps=2,
    calls_1=200,
    calls_64=640,
    pairs=1_000,
    waiters=100,
    probe_releases=5,
    grinder_jobs=2_000,
    grinder_tasks=100,
    process_jobs=100,
    case_timeout=60.0,
)
THREAD_WORKERS = 4  # the contract's default workers_per_pool
PROCESS_WORKERS = 2  # one per core on the 2-core benchmark machine


@dataclasses.dataclass(slots=True)
class Case:
    """One contender in one scenario configuration on one runtime."""

    scenario: str
    config: str
    runtime: str
    contender: str
    params: dict[str, Any]
    reps: int
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    problem: str = ""

    @property
    def side(self) -> str:
        """Which worker runs it: the predecessor's or the project's."""
        return "predecessor" if self.contender == "predecessor" else "current"

    @property
    def label(self) -> str:
        """Human-readable name for progress lines."""
        return " / ".join(
            (self.scenario, self.config, self.runtime, NAMES[self.contender])
        )

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identity used to look rows up when computing ratios and targets."""
        return (self.scenario, self.config, self.runtime, self.contender)


def plan(sizes: Sizes, scenarios: list[str], runtimes: list[str]) -> list[Case]:
    """List every case of the selected scenarios, in measuring order."""
    cases: list[Case] = []

    def add(
        scenario: str, config: str, contenders: dict[str, list[str]], **p: Any
    ) -> None:
        reps = {"grinder": sizes.grinder_reps, "process": sizes.process_reps}.get(
            scenario, sizes.reps
        )
        for runtime in runtimes:
            for contender in contenders.get(runtime, []):
                params = dict(p)
                if contender == "predecessor":
                    # 0.1.3 has no such option; it runs with max_pools alone.
                    params.pop("max_concurrent_batches", None)
                cases.append(Case(scenario, config, runtime, contender, params, reps))

    if "call" in scenarios:
        contenders = {
            "asyncio": ["raw_executor", "anyio_thread", "leasepool", "predecessor"],
            "trio": ["trio_thread", "anyio_thread", "leasepool"],
        }
        for callers, calls in ((1, sizes.calls_1), (64, sizes.calls_64)):
            add(
                "call",
                f"{callers} caller{'s' if callers > 1 else ''}",
                contenders,
                workers=THREAD_WORKERS,
                callers=callers,
                calls=calls,
                warmup=max(64, THREAD_WORKERS * 4),
            )
    if "acquire" in scenarios:
        contenders = {
            "asyncio": ["anyio_limiter", "leasepool", "predecessor"],
            "trio": ["anyio_limiter", "leasepool"],
        }
        for waiters in (0, sizes.waiters):
            add(
                "acquire",
                f"{waiters} waiters" if waiters else "uncontended",
                contenders,
                pairs=sizes.pairs,
                waiters=waiters,
                probe_releases=sizes.probe_releases,
            )
    if "grinder" in scenarios:
        common = {
            "jobs": sizes.grinder_jobs,
            "tasks": sizes.grinder_tasks,
            "threshold": 100,
            "max_wait_seconds": 0.01,
            "workers": THREAD_WORKERS,
        }
        add(
            "grinder",
            "direct",
            {"asyncio": ["anyio_direct"], "trio": ["anyio_direct"]},
            **common,
        )
        both = {"asyncio": ["leasepool", "predecessor"], "trio": ["leasepool"]}
        add("grinder", "1 pool", both, pools=1, **common)
        add("grinder", "2 pools", both, pools=2, max_concurrent_batches=2, **common)
    if "process" in scenarios:
        contenders = {
            "asyncio": ["raw_pool", "leasepool", "predecessor"],
            "trio": ["raw_pool", "leasepool"],
        }
        add(
            "process",
            f"{sizes.process_jobs} jobs",
            contenders,
            workers=PROCESS_WORKERS,
            callers=64,
            jobs=sizes.process_jobs,
            warmup=64,
            job_size=1_000,
            start_method="forkserver",
        )
    return cases


class Worker:
    """A ``_worker.py`` process in one virtual environment, spoken to by JSON lines.

    A reader thread moves reply lines into a queue so that a request can time
    out; a worker that times out is killed with its process group (which holds
    any process pool it started) and started afresh for the next request.
    """

    def __init__(self, python: str, name: str) -> None:
        self.python = python
        self.name = name
        self._process: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()

    def _start(self) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [self.python, str(BENCH / "_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            start_new_session=True,
        )
        self._replies = queue.Queue()
        replies, stdout = self._replies, process.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                replies.put(line)
            replies.put(None)

        threading.Thread(target=pump, daemon=True).start()
        self._process = process
        return process

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait for its reply, at most ``timeout`` seconds."""
        process = self._process if self._process is not None else self._start()
        assert process.stdin is not None
        try:
            process.stdin.write(json.dumps(message) + "\n")
            process.stdin.flush()
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.close(kill=True)
            return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
        except BrokenPipeError:
            line = None
        if line is None:
            self.close(kill=True)
            return {"ok": False, "error": f"{self.name} worker exited"}
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self, kill: bool = False) -> None:
        """Stop the worker: politely by closing stdin, or by killing its group."""
        process, self._process = self._process, None
        if process is None:
            return
        if not kill:
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(timeout=30)
                return
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def metric(case: Case, result: dict[str, Any]) -> float:
    """Turn one raw result into the scenario's unit (see ``UNITS``)."""
    seconds, ops = float(result["seconds"]), int(result["ops"])
    if case.scenario in ("call", "process"):
        return seconds / ops * 1e6
    return ops / seconds


UNITS = {
    "call": "µs/call",
    "process": "µs/job",
    "acquire": "pairs/s",
    "grinder": "jobs/s",
}
LOWER_IS_BETTER = {"call", "process"}


def median(case: Case) -> float | None:
    """Median of the case's per-repetition metric, or None without results."""
    if not case.results:
        return None
    return statistics.median(metric(case, result) for result in case.results)


def anchor_of(case: Case) -> tuple[str, str, str, str] | None:
    """Key of the row this case's 'vs anchor' ratio is taken against."""
    if case.scenario == "call":
        anchor = "raw_executor" if case.runtime == "asyncio" else "trio_thread"
        return ("call", case.config, case.runtime, anchor)
    if case.scenario == "acquire":
        return ("acquire", case.config, case.runtime, "anyio_limiter")
    if case.scenario == "grinder":
        return ("grinder", "direct", case.runtime, "anyio_direct")
    return ("process", case.config, case.runtime, "raw_pool")


def fmt(value: float | None, digits: int = 3) -> str:
    """Format a number to ``digits`` significant digits, or 'n/a'."""
    if value is None:
        return "n/a"
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def rows(cases: list[Case]) -> Iterator[list[str]]:
    """Yield one table row per case: medians, spread and both ratios."""
    by_key = {case.key: case for case in cases}

    def ratio(case: Case, other_key: tuple[str, str, str, str] | None) -> str:
        other = by_key.get(other_key) if other_key else None
        mine, theirs = median(case), median(other) if other else None
        if other is None or other is case or mine is None or not theirs:
            return ""
        return f"{mine / theirs:.2f}x"

    for case in cases:
        values = [metric(case, result) for result in case.results]
        spread = f"{fmt(min(values))}-{fmt(max(values))}" if values else ""
        shown = fmt(median(case)) if values else "n/a"
        predecessor = (case.scenario, case.config, "asyncio", "predecessor")
        yield [
            case.scenario,
            case.config,
            case.runtime,
            NAMES[case.contender],
            shown,
            UNITS[case.scenario] if values else "",
            spread,
            str(len(values)),
            ratio(case, anchor_of(case)),
            ratio(case, predecessor),
        ]


HEADER = [
    "scenario",
    "config",
    "runtime",
    "contender",
    "median",
    "unit",
    "min-max",
    "n",
    "vs anchor",
    "vs 0.1.3",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One target of issue 5, evaluated on the medians.

    ``paired`` is the median of the per-repetition ratios (repetition i of one
    side against repetition i of the other, measured moments apart): it is
    less sensitive than the ratio of medians to slow changes in the load of a
    shared machine, and shown beside it as a cross-check. The verdict follows
    the ratio of medians, as issue 5 defines the targets.
    """

    text: str
    value: float | None
    verdict: str
    shown: str
    paired: str = ""


Ratio = tuple[float | None, float | None]


def targets(cases: list[Case], waiters: int) -> list[Target]:
    """Evaluate every target of issue 5 that the selected scenarios cover."""
    by_key = {case.key: case for case in cases}
    found: list[Target] = []

    def med(*key: str) -> Case | None:
        return by_key.get((key[0], key[1], key[2], key[3]))

    def check(
        text: str, ratio: Ratio, ok: Callable[[float], bool], unit: str = "x"
    ) -> None:
        value, paired = ratio
        if value is None:
            found.append(Target(text, None, "n/a", "n/a"))
            return
        verdict = "met" if ok(value) else "MISSED"
        shown_paired = "" if paired is None else f"{paired:.2f}{unit}"
        found.append(Target(text, value, verdict, f"{value:.2f}{unit}", shown_paired))

    def quotient(a: Case | None, b: Case | None) -> Ratio:
        if a is None or b is None:
            return None, None
        top, bottom = median(a), median(b)
        if top is None or not bottom:
            return None, None
        per_rep = [
            metric(a, ra) / metric(b, rb)
            for ra, rb in zip(a.results, b.results, strict=False)
        ]
        return top / bottom, statistics.median(per_rep) if per_rep else None

    scenarios = {case.scenario for case in cases}
    if "call" in scenarios:
        check(
            "asyncio, 64 callers: lease.run ≤ 1.05x raw run_in_executor",
            quotient(
                med("call", "64 callers", "asyncio", "leasepool"),
                med("call", "64 callers", "asyncio", "raw_executor"),
            ),
            lambda v: v <= 1.05,
        )
        check(
            "trio, 64 callers: lease.run ≤ 1.0x trio.to_thread.run_sync",
            quotient(
                med("call", "64 callers", "trio", "leasepool"),
                med("call", "64 callers", "trio", "trio_thread"),
            ),
            lambda v: v <= 1.0,
        )
    if "acquire" in scenarios:
        crowd = f"{waiters} waiters"
        check(
            "asyncio: acquire+release pairs/s ≥ 2x 0.1.3's (uncontended)",
            quotient(
                med("acquire", "uncontended", "asyncio", "leasepool"),
                med("acquire", "uncontended", "asyncio", "predecessor"),
            ),
            lambda v: v >= 2.0,
        )
        check(
            "trio pairs/s within 1.2x of asyncio (asyncio ÷ trio, uncontended)",
            quotient(
                med("acquire", "uncontended", "asyncio", "leasepool"),
                med("acquire", "uncontended", "trio", "leasepool"),
            ),
            lambda v: v <= 1.2,
        )
        for runtime in RUNTIMES:
            case = by_key.get(("acquire", crowd, runtime, "leasepool"))
            text = f"{runtime}, {crowd}: each release wakes exactly one waiter"
            if case is None or not case.results:
                found.append(Target(text, None, "n/a", "n/a"))
            else:
                low = min(result["wakes_min"] for result in case.results)
                high = max(result["wakes_max"] for result in case.results)
                verdict = "met" if low == high == 1 else "MISSED"
                shown = f"{low:.0f}-{high:.0f} woken"
                found.append(Target(text, high, verdict, shown))
            check(
                f"{runtime}, {crowd}: time ≤ 3x uncontended for the same pairs",
                quotient(
                    med("acquire", "uncontended", runtime, "leasepool"),
                    med("acquire", crowd, runtime, "leasepool"),
                ),
                lambda v: v <= 3.0,
            )
    if "grinder" in scenarios:
        for config in ("1 pool", "2 pools"):
            check(
                f"asyncio, {config}: WorkGrinder ≥ 3x 0.1.3's throughput",
                quotient(
                    med("grinder", config, "asyncio", "leasepool"),
                    med("grinder", config, "asyncio", "predecessor"),
                ),
                lambda v: v >= 3.0,
            )
            for runtime in RUNTIMES:
                check(
                    f"{runtime}, {config}: WorkGrinder ≥ 5x direct "
                    "anyio.to_thread.run_sync",
                    quotient(
                        med("grinder", config, runtime, "leasepool"),
                        med("grinder", "direct", runtime, "anyio_direct"),
                    ),
                    lambda v: v >= 5.0,
                )
    if "process" in scenarios:
        config = next(c.config for c in cases if c.scenario == "process")
        for runtime in RUNTIMES:
            check(
                f"{runtime}: process lease.run ≤ 1.10x raw ProcessPoolExecutor",
                quotient(
                    med("process", config, runtime, "leasepool"),
                    med("process", config, runtime, "raw_pool"),
                ),
                lambda v: v <= 1.10,
            )
    return found


TARGET_HEADER = ["target", "ratio of medians", "median of paired ratios", "verdict"]


def problems(cases: list[Case]) -> list[str]:
    """One line per case that was skipped or failed, with the reason."""
    return [f"- {case.label}: {case.problem}" for case in cases if case.problem]


def wake_rows(cases: list[Case]) -> Iterator[list[str]]:
    """Yield the fairness details of the contended acquire cases."""
    for case in cases:
        if case.scenario != "acquire" or not case.results:
            continue
        if "wakes_max" not in case.results[0]:
            continue

        def mean(field: str, results: list[dict[str, Any]] = case.results) -> str:
            return f"{statistics.fmean(float(r[field]) for r in results):.2f}"

        lowest = min(result["wakes_min"] for result in case.results)
        highest = max(result["wakes_max"] for result in case.results)
        yield [
            case.runtime,
            NAMES[case.contender],
            f"{lowest:.0f}-{highest:.0f}",
            mean("wakes_mean"),
            mean("resumes_per_release"),
            mean("flow_resumes_per_pair"),
            mean("flow_handoff_share"),
        ]


WAKE_HEADER = [
    "runtime",
    "contender",
    "woken per release (min-max)",
    "woken per release (mean)",
    "resumptions per release",
    "resumptions per pair in flow",
    "handoff share in flow",
]


def text_table(header: list[str], body: list[list[str]]) -> str:
    """Render rows as an aligned plain-text table."""
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """Render rows as a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
        for row in body
    ]
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """Describe the machine: OS, CPU model, cores and memory."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "os": platform.platform(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
    }


def describe_params(cases: list[Case]) -> list[str]:
    """One line per scenario configuration with its parameters."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for case in cases:
        seen.setdefault((case.scenario, case.config), case.params | {"reps": case.reps})
    return [
        f"- {scenario} / {config}: "
        + ", ".join(f"{key}={value}" for key, value in params.items())
        for (scenario, config), params in seen.items()
    ]


METHOD = """\
How it measures: every contender runs inside the runtime's own runner
(`asyncio.run` / `trio.run`), started afresh for each repetition; starting and
stopping managers, pools and grinders is never timed, and thread or process
workers are warmed up before the clock starts. Repetitions are interleaved
across contenders. The project and `leasepool==0.1.3` run in separate virtual
environments (same import name), each in its own long-lived worker process;
only one measurement runs at a time.

- call: `await lease.run(noop)` on one lease of a pool of 4 threads, from 1 or
  64 concurrent tasks; anchors are `loop.run_in_executor` on a
  `ThreadPoolExecutor(4)`, `anyio.to_thread.run_sync` with
  `CapacityLimiter(4)`, `trio.to_thread.run_sync` with `trio.CapacityLimiter(4)`.
- acquire: `acquire()` + `release(lease_id)` on `max_pools=1`. Uncontended: one
  task. Contended: a holder takes the pool, every task queues behind it, the
  clock starts when all are blocked and the holder lets go; each task re-queues
  right after its release. `anyio.CapacityLimiter(1)` is a reference floor, not
  an anchor. The wake probe wraps each waiter's `acquire()` in a counter of
  scheduler resumptions and lets exactly one release happen between two
  settled states; "handoff share" is how often the next lease went to a
  different task than the previous one in the (untimed, observed) warm-up flow
  (1.0 = strict hand-off, low = the releasing task takes the pool back).
- grinder: `await grinder.submit(noop)` from many tasks, threshold 100,
  `max_wait_seconds=0.01`; "2 pools" is `max_pools=2` and, for this project,
  `max_concurrent_batches=2` (0.1.3 has no such option and runs with
  `max_pools=2` only). The anchor is every task calling
  `anyio.to_thread.run_sync(noop)` itself, default limiter.
- process: `await lease.run(small_cpu_job, 1000)` (~0.1 ms of CPU) from 64
  tasks on a process pool of 2 workers (forkserver) vs the same on a raw
  `ProcessPoolExecutor(2)` awaited through the runtime's future bridge.
- ratios are taken on medians in the row's own unit: for µs/call a ratio
  below 1 is faster than the anchor, for pairs/s and jobs/s above 1 is. The
  targets table adds the median of per-repetition paired ratios (repetition i
  against repetition i, measured moments apart) as a cross-check that is less
  sensitive to slow changes in the machine's load; verdicts follow the ratio
  of medians.
"""


def render_markdown(
    cases: list[Case],
    found: list[Target],
    infos: dict[str, dict[str, Any]],
    command: str,
    wall: float,
    kept: str,
) -> str:
    """Build the text of RESULTS.md."""
    current, predecessor = infos.get("current", {}), infos.get("predecessor", {})
    load = infos.get("load", {})
    host = machine()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Benchmark results (issue 5)",
        "",
        f"Produced by `{command}` on {now}; wall time {wall:.0f} s.",
        "",
        "## Machine and versions",
        "",
        f"- machine: {host['cpu']}, {host['cores']} cores, {host['memory']}, "
        f"{host['os']}",
        f"- Python: {current.get('python', 'n/a')} (project side), "
        f"{predecessor.get('python', 'n/a')} (0.1.3 side)",
        f"- anyio: {current.get('anyio', 'n/a')}; trio: {current.get('trio', 'n/a')}",
        f"- 1-minute load average: {load.get('before', 'n/a')} at the start, "
        f"{load.get('after', 'n/a')} at the end (above ~0.5 means other work "
        "shared the cores and widened the min-max spreads)",
        f"- leasepool (this): {current.get('version', 'n/a')}"
        + (
            ""
            if current.get("available")
            else f" — not measured: {current.get('reason', '')}"
        ),
        f"- leasepool 0.1.3: {predecessor.get('version', 'n/a')}"
        + (
            ""
            if predecessor.get("available")
            else f" — not measured: {predecessor.get('reason', '')}"
        ),
        "",
        "## Medians",
        "",
        markdown_table(HEADER, list(rows(cases))),
        "",
    ]
    if problems(cases):
        parts += ["Skipped or failed:", "", *problems(cases), ""]
    wakes = list(wake_rows(cases))
    if wakes:
        parts += [
            "## Waking and fairness with waiters",
            "",
            markdown_table(WAKE_HEADER, wakes),
            "",
        ]
    if found:
        parts += [
            "## Targets",
            "",
            markdown_table(
                TARGET_HEADER,
                [[t.text, t.shown, t.paired, t.verdict] for t in found],
            ),
            "",
        ]
    parts += ["## Method", "", METHOD, "## Parameters", "", *describe_params(cases), ""]
    parts += ["## Notes", "", KEEP_START, kept.strip("\n"), KEEP_END, ""]
    return "\n".join(parts)


def kept_notes(path: Path) -> str:
    """Return the hand-written notes of an existing RESULTS.md, if any."""
    try:
        text = path.read_text()
    except OSError:
        return "\n(Explanations of missed targets, with profiles, go here.)\n"
    start, end = text.find(KEEP_START), text.find(KEEP_END)
    if start < 0 or end < start:
        return ""
    return text[start + len(KEEP_START) : end]


def log(message: str, stream: TextIO = sys.stderr) -> None:
    """Print a progress line."""
    print(message, file=stream, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        description="Benchmark leasepool against its anchors and 0.1.3 (issue 5)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, 2 reps: a smoke run"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable); default: all",
    )
    parser.add_argument(
        "--runtime",
        action="append",
        choices=RUNTIMES,
        help="only this runtime (repeatable)",
    )
    parser.add_argument(
        "--reps",
        type=int,
        help="repetitions per case (default 9; grinder 5, process 31)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the Markdown report (default: bench/RESULTS.md for a "
        "full run of all scenarios, none for --quick or a partial run)",
    )
    parser.add_argument("--json", type=Path, help="also write every raw result here")
    parser.add_argument(
        "--predecessor-python",
        default=str(DEFAULT_PREDECESSOR),
        help="interpreter of the venv holding leasepool==0.1.3 (skipped if missing)",
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for the project side"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print the table, write the report."""
    args = parse_args(argv)
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        log(
            f"warning: load average is {load_before:.2f} before starting; other "
            "work on this machine will make the numbers noisy"
        )
    sizes = QUICK if args.quick else FULL
    if args.reps:
        sizes = dataclasses.replace(
            sizes, reps=args.reps, grinder_reps=args.reps, process_reps=args.reps
        )
    scenarios = args.scenario or list(SCENARIOS)
    runtimes = args.runtime or list(RUNTIMES)
    cases = plan(sizes, scenarios, runtimes)

    workers = {"current": Worker(args.python, "project")}
    infos: dict[str, dict[str, Any]] = {}
    if Path(args.predecessor_python).exists():
        workers["predecessor"] = Worker(args.predecessor_python, "0.1.3")
    else:
        infos["predecessor"] = {
            "available": False,
            "reason": f"no interpreter at {args.predecessor_python}",
        }
    for side, worker in workers.items():
        reply = worker.request({"op": "info"}, timeout=120)
        infos[side] = (
            reply["result"]
            if reply["ok"]
            else {
                "available": False,
                "reason": reply["error"],
            }
        )
    current = infos["current"]
    log(
        f"project side: python {current.get('python')}, anyio {current.get('anyio')}, "
        f"trio {current.get('trio')}, leasepool {current.get('version', '-')}"
        + (
            ""
            if current.get("available")
            else f" (not available: {current.get('reason')})"
        )
    )
    log(
        f"0.1.3 side: leasepool {infos['predecessor'].get('version', '-')}"
        + (
            ""
            if infos["predecessor"].get("available")
            else f" (not available: {infos['predecessor'].get('reason')})"
        )
    )
    for case in cases:
        info = infos[case.side]
        if case.contender not in ("leasepool", "predecessor"):
            continue
        if not info.get("available"):
            case.problem = "not available: " + str(info.get("reason"))
        elif case.scenario == "grinder" and not info.get("grinder"):
            case.problem = "not available: no WorkGrinder"
        elif (
            case.side == "current"
            and "max_concurrent_batches" in case.params
            and "max_concurrent_batches" not in info.get("grinder_params", [])
        ):
            case.problem = "not available: WorkGrinder has no max_concurrent_batches"
        if case.problem:
            log(f"skip {case.label}: {case.problem}")

    total_reps = max((case.reps for case in cases), default=0)
    for rep in range(total_reps):
        for case in cases:
            if case.problem or rep >= case.reps:
                continue
            label = f"[{rep + 1}/{case.reps}] {case.label}"
            reply = workers[case.side].request(
                {
                    "op": "measure",
                    "scenario": case.scenario,
                    "contender": case.contender,
                    "runtime": case.runtime,
                    "params": case.params,
                },
                timeout=sizes.case_timeout,
            )
            if not reply["ok"]:
                prefix = "not available: " if reply.get("unavailable") else "error: "
                case.problem = prefix + str(reply["error"])
                log(f"{label}: {case.problem}")
                continue
            case.results.append(reply["result"])
            log(f"{label}: {fmt(metric(case, reply['result']))} {UNITS[case.scenario]}")
    for worker in workers.values():
        worker.close()

    wall = time.perf_counter() - began
    infos["load"] = {
        "before": f"{load_before:.2f}",
        "after": f"{os.getloadavg()[0]:.2f}",
    }
    found = targets(cases, sizes.waiters)
    body = list(rows(cases))
    print()
    print(text_table(HEADER, body))
    if problems(cases):
        print("\nskipped or failed:")
        print("\n".join(problems(cases)))
    wakes = list(wake_rows(cases))
    if wakes:
        print()
        print(text_table(WAKE_HEADER, wakes))
    if found:
        print()
        print(
            text_table(
                TARGET_HEADER,
                [[t.text, t.shown, t.paired, t.verdict] for t in found],
            )
        )
    print(f"\nwall time {wall:.0f} s")

    launcher = os.environ.get("BENCH_LAUNCHER", "python bench/run.py")
    command = shlex.join([*shlex.split(launcher), *(argv or sys.argv[1:])])
    output = args.output
    if output is None and not args.quick and not args.scenario and not args.runtime:
        output = BENCH / "RESULTS.md"
    if output is not None:
        output.write_text(
            render_markdown(cases, found, infos, command, wall, kept_notes(output))
        )
        log(f"wrote {output}")
    if args.json is not None:
        raw = [dataclasses.asdict(case) for case in cases]
        args.json.write_text(json.dumps({"infos": infos, "cases": raw}, indent=1))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
