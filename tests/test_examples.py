"""Every example, and every complete program in the docs, runs as users run it.

Each file in ``examples/`` is started as a subprocess with this interpreter:

* a file whose name names a runtime (``quickstart_trio.py``) runs once, as is;
* a file that takes ``--runtime`` runs once per runtime, with the flag;
* any other file fails its test: every example must run on both runtimes.

Files whose name starts with ``interpreter`` use the interpreter backend and
are skipped below Python 3.14. A run must exit 0 within its time bound and
print no traceback and no Python warning.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNTIMES = ("asyncio", "trio")

# Generous: the main job takes a few seconds here; a hang still fails in time.
RUN_SECONDS = 150
# A traceback, a Python warning, an error swallowed at shutdown, or a log record
# at WARNING or above in the main job's log format.
BAD_OUTPUT = re.compile(
    r"Traceback \(most recent call last\)|\w+Warning: |^Exception ignored"
    r"|^(WARNING|ERROR|CRITICAL) ",
    re.MULTILINE,
)

NEEDS_314 = pytest.mark.skipif(
    sys.version_info < (3, 14),
    reason="the interpreter backend needs Python 3.14+ (InterpreterPoolExecutor)",
)


def _example_cases() -> list[object]:
    cases: list[object] = []
    for path in sorted(EXAMPLES.glob("*.py")):
        marks = [NEEDS_314] if path.stem.startswith("interpreter") else []
        named = [r for r in RUNTIMES if r in path.stem.split("_")]
        runs: list[tuple[str, list[str] | None]]
        if named:
            runs = [(r, []) for r in named]
        elif "--runtime" in path.read_text(encoding="utf-8"):
            runs = [(r, ["--runtime", r]) for r in RUNTIMES]
        else:
            runs = [("unknown", None)]
        for runtime, args in runs:
            cases.append(
                pytest.param(path, args, id=f"{path.stem}-{runtime}", marks=marks)
            )
    return cases


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run this interpreter on ``args``; output is decoded with ``\\r`` kept."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="default")
    env.pop("PYTHONDEVMODE", None)
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=RUN_SECONDS,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def _assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    report = (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    assert proc.returncode == 0, report
    assert not BAD_OUTPUT.search(proc.stdout + proc.stderr), report


@pytest.mark.timeout(RUN_SECONDS + 30)
@pytest.mark.parametrize(("path", "args"), _example_cases())
def test_example_runs_cleanly(path: Path, args: list[str] | None) -> None:
    if args is None:
        pytest.fail(
            f"{path.name} neither takes --runtime nor names its runtime in its "
            "file name, so it cannot be run on both runtimes; give it a "
            "--runtime asyncio|trio flag"
        )
    _assert_clean(_run([str(path), *args], cwd=ROOT))


@pytest.mark.timeout(RUN_SECONDS + 30)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_main_job_summary_accounts_for_every_file(runtime: str) -> None:
    proc = _run(
        [
            str(EXAMPLES / "main_job.py"),
            f"--runtime={runtime}",
            "--max-files=300",
            "--progress=tty",
        ],
        cwd=ROOT,
    )
    _assert_clean(proc)
    out = proc.stdout
    assert f"leasepool main job on {runtime}:" in out
    files = re.search(r"files +(\d+) in \d+ chunks?, 0 unreadable", out)
    assert files is not None, out
    assert int(files.group(1)) == 300
    assert "300/300 agree" in out
    leases = re.findall(
        r"leases granted (\d+), waited \d+, revoked (\d+); peak pools (\d+)/(\d+)",
        out,
    )
    assert len(leases) == 2, out
    for granted, revoked, peak, max_pools in leases:
        assert int(granted) > 0
        assert revoked == "0"
        assert 0 < int(peak) <= int(max_pools)
    # On a terminal the progress line is redrawn in place, then ended.
    assert proc.stderr.startswith("\r["), proc.stderr
    assert proc.stderr.endswith("\n"), proc.stderr


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def _program_cases() -> list[object]:
    examples = {p.read_text("utf-8").strip() for p in EXAMPLES.glob("*.py")}
    cases: list[object] = []
    for doc in DOCS:
        for i, block in enumerate(_python_blocks(doc.read_text("utf-8"))):
            complete = re.search(r"^(anyio|asyncio|trio)\.run\(", block, re.M)
            if complete and block.strip() not in examples:
                cases.append(pytest.param(block, id=f"{doc.stem}-{i}"))
    return cases


@pytest.mark.timeout(RUN_SECONDS + 30)
@pytest.mark.parametrize("source", _program_cases())
def test_docs_program_runs_cleanly(source: str, tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(source, encoding="utf-8")
    _assert_clean(_run([str(script)], cwd=tmp_path))


@pytest.mark.parametrize("name", ["asyncio", "trio"])
def test_quickstart_page_shows_its_example_and_output(name: str) -> None:
    page = (ROOT / "docs" / f"quickstart-{name}.md").read_text("utf-8")
    example = EXAMPLES / f"quickstart_{name}.py"
    blocks = [b.strip() for b in _python_blocks(page)]
    assert example.read_text("utf-8").strip() in blocks
    shown = re.search(r"It prints:\n\n```text\n(.*?)```", page, re.S)
    assert shown is not None, "the page must show the program's output"
    proc = _run([str(example)], cwd=ROOT)
    _assert_clean(proc)
    assert proc.stdout == shown.group(1)
