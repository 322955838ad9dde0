"""Hash and compress this Python's standard library under leases.

The main job of leasepool: a real workload on input every machine has. It
walks the running interpreter's standard library, then pushes every file
through two managers at once:

* a thread manager, whose leased pools hash each file with SHA-256;
* a process manager, whose leased pools compress each file with zlib and hash
  it again, so the two passes can be checked against each other.

Every chunk of files is worked on under a lease of its own, and more tasks
want leases than there are pools, so some of them queue: that is the bound
doing its job. A progress display runs meanwhile (one ``\\r``-updated line on a
terminal, a line every second otherwise), and a summary closes the run.

Run it on either runtime; the code below does not change::

    python examples/main_job.py --runtime asyncio
    python examples/main_job.py --runtime trio

The exit status is 0 when every file was hashed and compressed and both passes
agree, 1 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
import stat
import sys
import sysconfig
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TextIO, TypeVar

import anyio

from leasepool import ExecutorLease, LeasedExecutorManager

T = TypeVar("T")

# Directories under the stdlib path that are not the standard library:
# installed packages, and bytecode caches that the run itself may rewrite.
SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})

CHUNK_BYTES = 4 * 1024 * 1024  # a chunk is about this much input ...
CHUNK_FILES = 64  # ... or this many files, whichever comes first
LEASE_SECONDS = 60.0  # far longer than any chunk takes: nothing is revoked


class Entry(NamedTuple):
    """A file to work on."""

    path: str
    size: int


class Hashed(NamedTuple):
    """One file's result from the thread pass."""

    path: str
    size: int
    sha256: str  # empty when the file could not be read


class Compressed(NamedTuple):
    """One file's result from the process pass."""

    path: str
    size: int
    compressed: int
    sha256: str  # empty when the file could not be read


# -- work that runs in the pools ------------------------------------------------
# Process pools pickle the callable by reference, so these are top-level
# functions of an importable module, taking and returning plain tuples.


def list_files(root: str, max_files: int | None) -> list[Entry]:
    """Return the regular files under ``root``, sorted, skipping non-stdlib dirs."""
    found: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append(Entry(path, st.st_size))
                if max_files is not None and len(found) >= max_files:
                    return found
    return found


def hash_files(paths: Sequence[str]) -> list[Hashed]:
    """SHA-256 each file; runs in a thread pool (hashlib releases the GIL)."""
    out: list[Hashed] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256")
                size = f.tell()
        except OSError:
            out.append(Hashed(path, 0, ""))
        else:
            out.append(Hashed(path, size, digest.hexdigest()))
    return out


def compress_files(paths: Sequence[str], level: int) -> list[Compressed]:
    """zlib-compress and SHA-256 each file; runs in a worker process."""
    out: list[Compressed] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            out.append(Compressed(path, 0, 0, ""))
            continue
        packed = zlib.compress(data, level)
        digest = hashlib.sha256(data).hexdigest()
        out.append(Compressed(path, len(data), len(packed), digest))
    return out


# -- orchestration --------------------------------------------------------------


def make_chunks(entries: Sequence[Entry]) -> list[list[Entry]]:
    """Group files into chunks of about ``CHUNK_BYTES`` or ``CHUNK_FILES``."""
    chunks: list[list[Entry]] = []
    current: list[Entry] = []
    size = 0
    for entry in entries:
        if current and (size + entry.size > CHUNK_BYTES or len(current) >= CHUNK_FILES):
            chunks.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry.size
    if current:
        chunks.append(current)
    # Biggest chunks first, so no large file is left running alone at the end.
    chunks.sort(key=lambda c: sum(e.size for e in c), reverse=True)
    return chunks


def split(entries: Sequence[Entry], parts: int) -> list[list[str]]:
    """Deal files into ``parts`` slices of similar byte totals, biggest first."""
    slices: list[list[str]] = [[] for _ in range(parts)]
    totals = [0] * parts
    for entry in sorted(entries, key=lambda e: e.size, reverse=True):
        i = totals.index(min(totals))
        slices[i].append(entry.path)
        totals[i] += entry.size
    return [s for s in slices if s]


async def run_slices(
    lease: ExecutorLease,
    fn: Callable[[list[str]], list[T]],
    slices: Sequence[list[str]],
) -> list[T]:
    """Run ``fn`` on every slice at once in the leased pool; join the results."""
    results: list[list[T]] = [[] for _ in slices]

    async def one(i: int) -> None:
        results[i] = await lease.run(fn, slices[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(slices)):
            tg.start_soon(one, i)
    return [item for part in results for item in part]


@dataclass
class Progress:
    """Counts shared by the worker tasks and the display; loop thread only."""

    files: int
    bytes: int
    started: float = field(default_factory=time.perf_counter)
    hashed_files: int = 0
    hashed_bytes: int = 0
    packed_files: int = 0
    packed_bytes: int = 0
    compressed_bytes: int = 0
    unreadable: set[str] = field(default_factory=set)
    digests: dict[str, str] = field(default_factory=dict)
    mismatched: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        """Seconds since the work started."""
        return time.perf_counter() - self.started

    def line(self, runtime: str) -> str:
        """Return the one-line progress report."""
        elapsed = self.elapsed()
        rate = self.packed_bytes / elapsed / 1e6 if elapsed > 0 else 0.0
        return (
            f"[{runtime}] hashed {self.hashed_files}/{self.files}"
            f"  compressed {self.packed_files}/{self.files}"
            f"  {self.packed_bytes / 1e6:.1f}/{self.bytes / 1e6:.1f} MB"
            f"  {rate:.1f} MB/s  {elapsed:.1f}s"
        )

    def record_hashes(self, hashed: Sequence[Hashed]) -> None:
        """Count a chunk's thread-pass results and check their digests."""
        for h in hashed:
            self.hashed_files += 1
            self.hashed_bytes += h.size
            if not h.sha256:
                self.unreadable.add(h.path)
            else:
                self._check(h.path, h.sha256)

    def record_compressed(self, packed: Sequence[Compressed]) -> None:
        """Count a chunk's process-pass results and check their digests."""
        for c in packed:
            self.packed_files += 1
            self.packed_bytes += c.size
            self.compressed_bytes += c.compressed
            if not c.sha256:
                self.unreadable.add(c.path)
            else:
                self._check(c.path, c.sha256)

    def _check(self, path: str, digest: str) -> None:
        seen = self.digests.setdefault(path, digest)
        if seen != digest:
            self.mismatched.append(path)


async def show_progress(
    progress: Progress, runtime: str, mode: str, out: TextIO, done: anyio.Event
) -> None:
    """Redraw one line on a terminal; print a line a second otherwise."""
    if mode == "off":
        await done.wait()
        return
    tty = mode == "tty"
    interval = 0.1 if tty else 1.0
    width = 0
    while not done.is_set():
        with anyio.move_on_after(interval):
            await done.wait()
        text = progress.line(runtime)
        if tty:
            out.write("\r" + text.ljust(width))
            width = len(text)
        elif not done.is_set():
            out.write(text + "\n")
        out.flush()
    if tty:
        out.write("\n")
        out.flush()


async def work(
    chunks: Iterator[tuple[int, list[Entry]]],
    threads: LeasedExecutorManager,
    processes: LeasedExecutorManager,
    progress: Progress,
    workers: int,
    level: int,
) -> None:
    """Take chunks until none are left: hash under one lease, pack under another.

    Several of these tasks share one iterator, so each chunk goes to exactly one
    of them; there are more tasks than pools, so some wait for their lease.
    """
    pack = functools.partial(compress_files, level=level)  # picklable, unlike a lambda
    for n, chunk in chunks:
        slices = split(chunk, workers)
        async with await threads.acquire(
            owner=f"hash-{n}", lease_seconds=LEASE_SECONDS
        ) as lease:
            hashed = await run_slices(lease, hash_files, slices)
        progress.record_hashes(hashed)
        async with await processes.acquire(
            owner=f"zlib-{n}", lease_seconds=LEASE_SECONDS
        ) as lease:
            packed = await run_slices(lease, pack, slices)
        progress.record_compressed(packed)


@dataclass(frozen=True, slots=True)
class Options:
    """The command line, parsed."""

    runtime: str
    root: str
    max_files: int | None
    pools: int
    workers: int
    tasks: int
    level: int
    progress: str


async def main_job(opts: Options) -> int:
    """Run the whole job on the current runtime; return the exit status."""
    started = time.perf_counter()
    threads = LeasedExecutorManager(
        backend="thread",
        max_pools=opts.pools,
        workers_per_pool=opts.workers,
        name_prefix="main-job-hash",
    )
    processes = LeasedExecutorManager(
        backend="process",
        max_pools=opts.pools,
        workers_per_pool=opts.workers,
        name_prefix="main-job-zlib",
    )
    async with threads, processes:
        async with await threads.acquire(owner="walk") as lease:
            entries = await lease.run(list_files, opts.root, opts.max_files)
        chunks = make_chunks(entries)
        progress = Progress(files=len(entries), bytes=sum(e.size for e in entries))
        done = anyio.Event()
        shared = iter(enumerate(chunks, 1))
        async with anyio.create_task_group() as display:
            display.start_soon(
                show_progress, progress, opts.runtime, opts.progress, sys.stderr, done
            )
            try:
                async with anyio.create_task_group() as tg:
                    for _ in range(opts.tasks):
                        tg.start_soon(
                            work,
                            shared,
                            threads,
                            processes,
                            progress,
                            opts.workers,
                            opts.level,
                        )
            finally:
                done.set()
        thread_stats = threads.stats()
        process_stats = processes.stats()
    wall = time.perf_counter() - started
    print_summary(opts, progress, len(chunks), wall, thread_stats, process_stats)
    complete = (
        progress.hashed_files == progress.files
        and progress.packed_files == progress.files
        and not progress.mismatched
        and not progress.unreadable
    )
    return 0 if complete else 1


def print_summary(
    opts: Options,
    progress: Progress,
    chunks: int,
    wall: float,
    thread_stats: dict[str, object],
    process_stats: dict[str, object],
) -> None:
    """Print the closing summary to stdout."""
    mb = progress.packed_bytes / 1e6
    ratio = progress.compressed_bytes / progress.packed_bytes if mb else 0.0
    agree = len(progress.digests) - len(set(progress.mismatched))
    version = ".".join(map(str, sys.version_info[:3]))
    lines = [
        f"leasepool main job on {opts.runtime}: Python {version} standard library",
        f"  root         {opts.root}",
        f"  files        {progress.packed_files} in {chunks}"
        f" chunk{'' if chunks == 1 else 's'},"
        f" {len(progress.unreadable)} unreadable",
        f"  bytes        {mb:.1f} MB read, {progress.compressed_bytes / 1e6:.1f} MB"
        f" after zlib ({ratio:.1%})",
        f"  digests      {agree}/{len(progress.digests)} agree between the thread"
        " and the process pass",
        f"  throughput   {mb / wall:.1f} MB/s ({mb:.1f} MB in {wall:.2f} s,"
        " both passes overlapped)",
    ]
    for label, s in (("thread", thread_stats), ("process", process_stats)):
        workers = s["workers_per_pool"]
        lines.append(
            f"  {label:<12} leases granted {s['leases_granted']},"
            f" waited {s['leases_waited']}, revoked {s['leases_revoked']};"
            f" peak pools {s['peak_pools']}/{s['max_pools']},"
            f" {workers} worker{'' if workers == 1 else 's'} each"
        )
    print("\n".join(lines), flush=True)


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse the command line and set up logging for it."""
    parser = argparse.ArgumentParser(
        description="Hash (threads) and zlib-compress (processes) this Python's "
        "standard library, every chunk of files under a lease."
    )
    parser.add_argument("--runtime", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument(
        "--root",
        default=sysconfig.get_paths()["stdlib"],
        help="directory to walk (default: the running interpreter's stdlib)",
    )
    parser.add_argument(
        "--max-files", type=int, default=None, help="stop the walk after N files"
    )
    parser.add_argument("--pools", type=int, default=2, help="max_pools per manager")
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="workers_per_pool per manager (default: half the CPUs)",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=None,
        help="tasks competing for leases (default: twice --pools)",
    )
    parser.add_argument("--level", type=int, default=6, help="zlib level, 0-9")
    parser.add_argument(
        "--progress",
        choices=["auto", "tty", "lines", "off"],
        default="auto",
        help="progress on stderr: one redrawn line (tty), a line a second "
        "(lines), or none; auto picks tty when stderr is a terminal",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of leasepool's own log records (DEBUG shows every lease)",
    )
    args = parser.parse_args(argv)
    for name in ("pools", "workers", "tasks", "max_files"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not 0 <= args.level <= 9:
        parser.error(f"--level must be 0 to 9, got {args.level}")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("leasepool").setLevel(args.log_level)
    progress = args.progress
    if progress == "auto":
        progress = "tty" if sys.stderr.isatty() else "lines"
    return Options(
        runtime=args.runtime,
        root=args.root,
        max_files=args.max_files,
        pools=args.pools,
        workers=args.workers,
        tasks=args.tasks if args.tasks is not None else 2 * args.pools,
        level=args.level,
        progress=progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job on the runtime the command line names."""
    opts = parse_args(argv)
    return anyio.run(main_job, opts, backend=opts.runtime)


if __name__ == "__main__":
    sys.exit(main())
