"""Forwarding of log records from process workers to the parent's loggers.

Theory of operation
-------------------
Every process pool gets a pipe of its own. Its workers write to it, and one
listener thread per backend reads every pool's pipe and re-emits the records
through the target logger in the parent, so that the parent's handlers, filters
and levels decide what is written, exactly as for records logged in the parent.

A pipe per pool, rather than one queue shared by all pools, because revocation
kills workers with SIGKILL: a worker killed while it held a shared queue's write
lock would silence every pool for the rest of the run. A pool's pipe dies with
the pool.

The worker side never blocks for long and never runs a thread. A record is formatted in
the worker (its arguments need not be picklable, only the message text travels),
pickled, and cut into frames of at most ``PIPE_BUF`` bytes. POSIX makes a write
of that size to a pipe atomic, so frames of different workers never interleave
and a worker killed mid-record leaves only whole frames behind; the listener
reassembles frames per worker pid and drops a record that never completes. The
write end is non-blocking: when the pipe is full (the parent is behind) the
worker waits a bounded moment for room, then drops the record and every
following one until a write succeeds again, counting them; the count travels
with the worker's next record, which makes the parent log
``process_logs.dropped``. Memory is bounded
by the pipe's kernel buffer; nothing grows in the worker.

The parent keeps the write end open while the pool may still start workers,
and closes the channel once the pool's workers have exited, after reading what
they left in the pipe; a stopped manager leaves no thread or descriptor behind.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.util
import os
import pickle
import select
import selectors
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LogForwarder",
    "ProcessLoggingConfig",
    "check_level",
    "forwarding_initializer",
]

_module_log = logging.getLogger("leasepool.process_logging")

# Frame header: writer pid, records the writer dropped before this one, flags,
# payload length.
_HEADER = struct.Struct("!IIBH")
_FIRST = 1
_LAST = 2
# How long, in all, a worker waits for room in a full pipe during one spell
# of congestion before it starts dropping: long enough to ride out a burst
# while the parent's listener is busy, short enough that a parent which reads
# slowly or not at all costs a job next to nothing. Summed over the spell, so
# that a reader which frees room one record at a time cannot hold the worker
# to its pace with many short waits.
_CONGESTION_WAIT = 0.5
# A spell ends at a write that finds room this long after the last wait or
# drop: the parent has caught up. (Writes that find room at once say little:
# a pipe takes writes again as soon as the reader frees one page of it.)
_CLEAR_SECONDS = 1.0
# POSIX guarantees at least 512; Linux has 4096. Larger gains nothing.
_FRAME_BYTES = min(getattr(select, "PIPE_BUF", 512), 4096)
_CHUNK_BYTES = _FRAME_BYTES - _HEADER.size
# A record's message, traceback and stack text are each cut to this many
# characters, so one record cannot fill the pipe on its own.
_MAX_TEXT = 32_768
# Kernel buffer asked for each pool's pipe (Linux only): room for a burst of
# about a thousand ordinary records. Larger pipes count against a per-user
# limit that, once passed, shrinks every new pipe of the application.
_PIPE_BYTES = 256 * 1024
# How long stop() and a pool's shutdown wait for the listener to pass on what
# the workers left in the pipe; only a parent handler that hangs makes it
# matter.
_DRAIN_SECONDS = 10.0
_READS_PER_WAKE = 16


@dataclass(frozen=True, slots=True)
class ProcessLoggingConfig:
    """How records logged in process workers reach the parent.

    Attributes:
        enabled: Forward records at all. Off by default: workers then log
            wherever their own logging configuration sends them.
        level: The lowest level a worker sends; records below it are dropped in
            the worker, before they cost a trip through the pipe.
        target_logger: The parent logger that re-emits forwarded records, so
            they pass through its handlers, filters and level (the records keep
            the name of the worker logger that made them). ``None`` means the
            manager's logger.
        clear_child_handlers: Remove handlers a worker inherited or configured
            before forwarding starts, so no record is written twice.
    """

    enabled: bool = False
    level: int = logging.INFO
    target_logger: logging.Logger | None = None
    clear_child_handlers: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be True or False, got {self.enabled!r}")
        check_level("level", self.level)
        if self.target_logger is not None and not isinstance(
            self.target_logger, logging.Logger
        ):
            raise ValueError(
                "target_logger must be a logging.Logger or None, "
                f"got {self.target_logger!r}"
            )
        if not isinstance(self.clear_child_handlers, bool):
            raise ValueError(
                "clear_child_handlers must be True or False, "
                f"got {self.clear_child_handlers!r}"
            )


def check_level(name: str, level: object) -> int:
    if type(level) is not int or level < 0:
        raise ValueError(
            f"{name} must be a logging level such as logging.INFO, got {level!r}"
        )
    return level


# -- worker side --------------------------------------------------------------

_STANDARD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_PLAIN_TYPES = (type(None), bool, int, float, str, bytes)
_exception_formatter = logging.Formatter()


def forwarding_initializer(
    writer: Any,
    level: int,
    clear_handlers: bool,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    """Send this worker's log records to the parent, then run the user's setup.

    Runs first in every process worker of a forwarding pool. Forwarding is in
    place before the user's initializer runs, so what it logs is forwarded too.
    """
    os.set_blocking(writer.fileno(), False)
    root = logging.getLogger()
    if clear_handlers:
        loggers = [root]
        loggers += [
            logger
            for logger in logging.root.manager.loggerDict.values()
            if isinstance(logger, logging.Logger)
        ]
        for logger in loggers:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
    handler = _PipeHandler(writer, level)
    root.addHandler(handler)
    # Records dropped at the end of a flood have no later record to carry
    # their count: send it on its own as the worker exits.
    multiprocessing.util.Finalize(None, handler.report_dropped, exitpriority=100)
    if root.level > level:
        root.setLevel(level)
    if initializer is not None:
        initializer(*initargs)


class _PipeHandler(logging.Handler):
    """Writes records to the pool's pipe without ever blocking the worker."""

    def __init__(self, writer: Any, level: int) -> None:
        super().__init__(level)
        self._writer = writer  # keeps the descriptor open
        self._fd: int = writer.fileno()
        self._dropped = 0
        self._reader_gone = False
        # The current spell of congestion: seconds waited for room so far,
        # when the last wait or drop happened, and whether the budget is
        # spent (drop rather than wait).
        self._waited = 0.0
        self._last_trouble = 0.0
        self._congested = False

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds self.lock: one record's frames go out together.
        if self._reader_gone:
            self._dropped += 1
            return
        try:
            data = encode_record(record)
        except Exception:
            self.handleError(record)
            return
        self._send(data)

    def _send(self, data: bytes) -> None:
        pid = os.getpid() & 0xFFFFFFFF
        reported = min(self._dropped, 0xFFFFFFFF)
        view = memoryview(data)
        start = 0
        total = len(data)
        while True:
            end = min(start + _CHUNK_BYTES, total)
            flags = (_FIRST if start == 0 else 0) | (_LAST if end == total else 0)
            header = _HEADER.pack(
                pid, reported if start == 0 else 0, flags, end - start
            )
            try:
                os.write(self._fd, header + view[start:end])
            except BlockingIOError:  # the pipe is full: the parent is behind
                if time.monotonic() - self._last_trouble > _CLEAR_SECONDS:
                    # A quiet second since the last wait or drop: the parent
                    # had caught up, and this new spell gets a full budget.
                    self._congested = False
                    self._waited = 0.0
                if not self._congested and self._wait_writable():
                    continue  # room within the spell's budget: resend
                # Behind for longer than the budget: drop until the parent has
                # caught up, so a flood costs the worker one short wait in all.
                self._congested = True
                self._last_trouble = time.monotonic()
                self._dropped += 1
                return
            except OSError:  # the parent has closed its end: nobody reads
                self._reader_gone = True
                self._dropped += 1
                return
            if end == total:
                break
            start = end
        self._dropped -= reported

    def close(self) -> None:
        # logging.shutdown() closes handlers as a worker exits, on some
        # Pythons before multiprocessing's finalizers run: report here too.
        self.report_dropped()
        super().close()

    def report_dropped(self) -> None:
        """Send the count of records not yet reported as dropped, alone."""
        with self.lock or contextlib.nullcontext():
            reported = min(self._dropped, 0xFFFFFFFF)
            if not reported or self._reader_gone:
                return
            pid = os.getpid() & 0xFFFFFFFF
            frame = _HEADER.pack(pid, reported, _FIRST | _LAST, 0)
            # The pipe may still be full of the flood: wait for room once more,
            # whatever the spell's budget, since the worker is leaving anyway.
            try:
                os.write(self._fd, frame)
            except BlockingIOError:
                if not self._select_writable(_CONGESTION_WAIT):
                    return
                try:
                    os.write(self._fd, frame)
                except OSError:
                    return
            except OSError:
                return
            self._dropped -= reported

    def _wait_writable(self) -> bool:
        """Wait for room out of the spell's budget; tell if there is some."""
        budget = _CONGESTION_WAIT - self._waited
        if budget <= 0:
            return False
        now = time.monotonic()
        writable = self._select_writable(budget)
        self._last_trouble = time.monotonic()
        self._waited += self._last_trouble - now
        return writable

    def _select_writable(self, timeout: float) -> bool:
        try:
            _, writable, _ = select.select([], [self._fd], [], timeout)
        except (OSError, ValueError):
            return False
        return bool(writable)


def encode_record(record: logging.LogRecord) -> bytes:
    """Pickle a record so that the parent can always rebuild it.

    The message is formatted here, so arguments that cannot be pickled never
    travel; an exception travels as its formatted traceback; attributes added
    with ``extra=`` travel as plain data, or as their ``repr()``.
    """
    fields = dict(record.__dict__)
    fields["msg"] = _clip(_message(record))
    fields["args"] = None
    if record.exc_info and not record.exc_text:
        fields["exc_text"] = _exception_formatter.formatException(record.exc_info)
    fields["exc_info"] = None
    for key in ("exc_text", "stack_info"):
        if isinstance(fields.get(key), str):
            fields[key] = _clip(fields[key])
    for key, value in fields.items():
        if key not in _STANDARD_FIELDS:
            fields[key] = _plain(value, 0)
    try:
        return pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        # A standard attribute was replaced by something exotic.
        plain = {key: _plain(value, 0) for key, value in fields.items()}
        return pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as exc:
        return (
            f"{_safe_repr(record.msg)} % {_safe_repr(record.args)} "
            f"(the message could not be formatted: {_safe_repr(exc)})"
        )


def _clip(text: str) -> str:
    if len(text) <= _MAX_TEXT:
        return text
    return f"{text[:_MAX_TEXT]}... [{len(text) - _MAX_TEXT} characters cut]"


def _plain(value: object, depth: int) -> object:
    """Return ``value`` if the parent can surely unpickle it, else its repr."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return value
    if depth < 4 and kind in (list, tuple) and isinstance(value, list | tuple):
        items = [_plain(item, depth + 1) for item in value]
        return items if kind is list else tuple(items)
    if depth < 4 and kind is dict and isinstance(value, dict):
        return {
            (key if type(key) in _PLAIN_TYPES else _safe_repr(key)): _plain(
                item, depth + 1
            )
            for key, item in value.items()
        }
    return _safe_repr(value)


def _safe_repr(value: object) -> str:
    try:
        return _clip(repr(value))
    except Exception:
        return f"<{type(value).__qualname__} object (repr failed)>"


# -- parent side --------------------------------------------------------------


class _Channel:
    """One pool's pipe, as the parent sees it."""

    __slots__ = ("buffer", "done", "name", "partial", "reader", "writer")

    def __init__(self, name: str, reader: Any, writer: Any) -> None:
        self.name = name
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        # pid -> (records dropped before, frames so far) of a record in transit
        self.partial: dict[int, tuple[int, bytearray]] = {}
        self.done = threading.Event()


class LogForwarder:
    """The parent's half: one listener thread reading every pool's pipe.

    ``start`` and ``stop`` come from the manager's start and stop; channels
    are opened when a pool is created and closed when its workers are gone.
    All methods are thread-safe; the selector and channel buffers are touched
    only by the listener thread.
    """

    def __init__(self, config: ProcessLoggingConfig) -> None:
        self._config = config
        self._target = config.target_logger or _module_log
        self._log = _module_log
        self._lock = threading.Lock()
        self._commands: list[tuple[str, _Channel | None]] = []
        self._channels: set[_Channel] = set()
        self._thread: threading.Thread | None = None
        self._wake_r = -1
        self._wake_w = -1
        self._selector: selectors.BaseSelector | None = None
        self._dropped = 0

    @property
    def config(self) -> ProcessLoggingConfig:
        """The settings this forwarder was made with."""
        return self._config

    @property
    def dropped(self) -> int:
        """Records workers reported dropping because the pipe was full."""
        return self._dropped

    @property
    def running(self) -> bool:
        """Whether the listener thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self, logger: logging.Logger | None = None) -> None:
        """Start the listener; a no-op when it runs.

        Args:
            logger: Where forwarded records go when the config names no
                ``target_logger``, and where the forwarder reports dropped
                records; the manager passes its own logger.
        """
        with self._lock:
            if logger is not None:
                self._log = logger
                self._target = self._config.target_logger or logger
            if self._thread is not None:
                return
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ, None)
            self._commands.clear()
            for channel in self._channels:
                self._commands.append(("add", channel))
            self._thread = threading.Thread(
                target=self._listen, name="leasepool-process-logs", daemon=True
            )
            self._thread.start()

    def open_channel(self, mp_context: Any, name: str) -> _Channel:
        """Make the pipe for a new pool and start reading it."""
        reader, writer = mp_context.Pipe(duplex=False)
        os.set_blocking(reader.fileno(), False)
        os.set_blocking(writer.fileno(), False)
        _grow_pipe(writer.fileno())
        channel = _Channel(name, reader, writer)
        with self._lock:
            self._channels.add(channel)
            self._send_locked("add", channel)
        return channel

    def initargs(
        self,
        channel: _Channel,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
    ) -> tuple[Any, ...]:
        """Return the arguments of :func:`forwarding_initializer` for a pool."""
        config = self._config
        return (
            channel.writer,
            config.level,
            config.clear_child_handlers,
            initializer,
            initargs,
        )

    def close_channel(self, channel: _Channel, *, wait: bool) -> None:
        """Stop reading a pool's pipe, passing on what is already in it.

        Call it once the pool's workers have exited; with ``wait`` it returns
        after the records they left have been re-emitted.
        """
        with self._lock:
            if channel not in self._channels:
                return
            channel.writer.close()
            if self._thread is None or not self._thread.is_alive():
                # No listener (not started, or it failed): nobody to drain.
                self._channels.discard(channel)
                channel.reader.close()
                channel.done.set()
                return
            self._send_locked("close", channel)
        if wait and not channel.done.wait(_DRAIN_SECONDS):
            self._log.warning("process_logs.drain_timeout pool=%s", channel.name)

    def stop(self) -> None:
        """Pass on what is in the pipes, then end the listener and close them."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._send_locked("stop", None)
        thread.join(_DRAIN_SECONDS)
        with self._lock:
            if thread.is_alive():
                # A parent handler hangs; leave the thread its descriptors.
                self._log.warning("process_logs.listener_stuck")
                return
            self._thread = None
            assert self._selector is not None
            self._selector.close()
            self._selector = None
            os.close(self._wake_r)
            os.close(self._wake_w)
            for channel in self._channels:
                channel.writer.close()
                channel.reader.close()
                channel.done.set()
            self._channels.clear()

    def _send_locked(self, command: str, channel: _Channel | None) -> None:
        if self._thread is None:
            return  # start() hands every open channel to the new listener
        self._commands.append((command, channel))
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # wake-ups already pending: the listener will look

    # -- listener thread ------------------------------------------------------

    def _listen(self) -> None:
        selector = self._selector
        assert selector is not None
        try:
            while True:
                for key, _ in selector.select():
                    channel = key.data
                    if channel is None:
                        if self._run_commands(selector):
                            return
                    else:
                        self._read(selector, channel)
        except BaseException:
            self._log.exception("process_logs.listener_failed")
            with self._lock:
                for channel in self._channels:
                    channel.done.set()  # nobody will drain them: do not wait

    def _run_commands(self, selector: selectors.BaseSelector) -> bool:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            commands, self._commands = self._commands, []
        for command, channel in commands:
            if command == "add":
                assert channel is not None
                selector.register(
                    channel.reader.fileno(), selectors.EVENT_READ, channel
                )
            elif command == "close":
                assert channel is not None
                self._drain(selector, channel)
                self._forget(selector, channel)
            else:  # stop
                with self._lock:
                    channels = list(self._channels)
                for channel in channels:
                    self._drain(selector, channel)
                    self._forget(selector, channel)
                return True
        return False

    def _read(self, selector: selectors.BaseSelector, channel: _Channel) -> None:
        """Read what the pipe holds now, a bounded amount per wake-up."""
        for _ in range(_READS_PER_WAKE):
            try:
                data = os.read(channel.reader.fileno(), 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # every write end is closed
                self._forget(selector, channel)
                return
            channel.buffer += data
            self._parse(channel)

    def _drain(self, selector: selectors.BaseSelector, channel: _Channel) -> None:
        while not channel.done.is_set():
            try:
                data = os.read(channel.reader.fileno(), 65536)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            channel.buffer += data
            self._parse(channel)

    def _forget(self, selector: selectors.BaseSelector, channel: _Channel) -> None:
        if channel.done.is_set():
            return
        try:
            selector.unregister(channel.reader.fileno())
        except (KeyError, ValueError):
            pass
        with self._lock:
            self._channels.discard(channel)
            channel.reader.close()
        channel.partial.clear()
        channel.done.set()

    def _parse(self, channel: _Channel) -> None:
        buffer = channel.buffer
        size = _HEADER.size
        pos = 0
        while len(buffer) - pos >= size:
            pid, dropped, flags, length = _HEADER.unpack_from(buffer, pos)
            end = pos + size + length
            if end > len(buffer):
                break
            if flags & _FIRST:
                # A record of this pid left unfinished is dropped here.
                channel.partial[pid] = (dropped, bytearray())
            entry = channel.partial.get(pid)
            if entry is not None:
                entry[1].extend(buffer[pos + size : end])
                if flags & _LAST:
                    del channel.partial[pid]
                    self._deliver(channel, entry[0], bytes(entry[1]))
            pos = end
        del buffer[:pos]

    def _deliver(self, channel: _Channel, dropped: int, payload: bytes) -> None:
        if dropped:
            self._dropped += dropped
            self._log.warning(
                "process_logs.dropped pool=%s count=%d total=%d",
                channel.name,
                dropped,
                self._dropped,
            )
        if not payload:  # a count on its own, sent by a worker as it exits
            return
        try:
            record = logging.makeLogRecord(pickle.loads(payload))
            target = self._target
            if target.isEnabledFor(record.levelno):
                target.handle(record)
        except Exception:
            self._log.exception("process_logs.dispatch_failed pool=%s", channel.name)


def _grow_pipe(fd: int) -> None:
    if sys.platform != "linux":
        return
    import fcntl

    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:
        pass  # over the per-user pipe budget: keep the default size
