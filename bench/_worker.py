"""Measurement worker: one JSON request per stdin line, one JSON reply per line.

``run.py`` starts one worker per virtual environment (the project's and the
predecessor's, which share the import name ``leasepool``) and sends requests
one at a time, so that only one measurement runs on the machine at once.
Anything the code under test prints goes to stderr; stdout carries replies
only.

Request: ``{"op": "measure", "scenario": ..., "contender": ...,
"runtime": ..., "params": {...}}`` or ``{"op": "info"}``.
Reply: ``{"ok": true, "result": {...}}``, or ``{"ok": false, "error": ...,
"unavailable": bool}``.
"""

from __future__ import annotations

import json
import platform
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

import _anchors
import _leasing
from _harness import NotAvailableError
from _jobs import noop_calls


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("anyio", "trio", "leasepool"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _measure(request: dict[str, Any]) -> dict[str, Any]:
    scenario, contender = request["scenario"], request["contender"]
    function: Callable[[str, dict[str, Any]], dict[str, Any]]
    if contender in ("leasepool", "predecessor"):
        function = _leasing.CONTENDERS[scenario]
    else:
        function = _anchors.CONTENDERS[(scenario, contender)]
    params = request["params"]
    noop_calls(reset=True)
    result = function(request["runtime"], params)
    # Every timed (and warm-up) no-op call must really have run: a contender
    # that dropped work would otherwise look fast.
    expected = {
        "call": params.get("calls", 0) + params.get("warmup", 0),
        "grinder": params.get("jobs", 0),
    }.get(scenario)
    ran = noop_calls(reset=True)
    if expected is not None and ran != expected:
        raise RuntimeError(f"{ran} of {expected} no-op calls ran")
    return result


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    try:
        if request["op"] == "info":
            return {"ok": True, "result": _versions() | _leasing.info()}
        return {"ok": True, "result": _measure(request)}
    except NotAvailableError as exc:
        return {"ok": False, "error": str(exc), "unavailable": True}
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "unavailable": False,
        }


def main() -> None:
    """Serve requests until stdin closes."""
    replies: TextIO = sys.stdout
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        reply = _handle(json.loads(line))
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
