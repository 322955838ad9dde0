"""Ctrl-C during process work: the program exits promptly and leaves no worker.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the
program, its forkserver and its workers. The test starts a small program in a
session of its own and signals that group, as a terminal would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX process groups"),
]

PROGRAM = """
import os
import sys
import time

import anyio

from leasepool import LeasedExecutorManager


def job(path):
    with open(path, "a") as file:
        file.write(f"{os.getpid()}\\n")
    time.sleep(60)


async def main(path):
    async with LeasedExecutorManager(
        backend="process", max_pools=2, workers_per_pool=2, forward_process_logs=True
    ) as manager:
        async with await manager.acquire() as lease, anyio.create_task_group() as tg:
            tg.start_soon(lease.run, job, path)
            tg.start_soon(lease.run, job, path)


if __name__ == "__main__":
    anyio.run(main, sys.argv[2], backend=sys.argv[1])
"""

START_SECONDS = 30.0  # a cold interpreter plus a forkserver start on a slow box
EXIT_SECONDS = 15.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_process_ctrl_c_during_work_exits_promptly(
    tmp_path: Path, runtime: str
) -> None:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM, encoding="utf-8")
    pids_file = tmp_path / "pids"
    proc = subprocess.Popen(
        [sys.executable, str(script), runtime, str(pids_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def both_jobs_running() -> bool:
            return pids_file.exists() and len(pids_file.read_text().split()) == 2

        assert _wait_for(both_jobs_running, START_SECONDS), "the jobs never started"
        workers = [int(pid) for pid in pids_file.read_text().split()]
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=EXIT_SECONDS)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    text = output.decode("utf-8", "replace")
    assert proc.returncode != 0, text
    assert "KeyboardInterrupt" in text, text
    assert took < EXIT_SECONDS
    assert _wait_for(lambda: not any(_alive(pid) for pid in workers), 10.0)
