"""Running unattended: logs for terminals and collectors, the run lock, schedules, stop signals."""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .errors import ConnectorError, UsageError

EXIT_INTERRUPTED = 130
_STOP = threading.Event()
_RUN_ID = {"value": "-"}
CONTEXT_FIELDS = ("account", "region", "source", "table")


# -- the garbage collector ----------------------------------------------------------

@contextmanager
def fewer_gc_passes(first_generation: int = 50_000) -> Iterator[None]:
    """A run builds hundreds of thousands of small objects that hold no cycles
    (raw items, CMDB rows, CIs). With Python's default threshold of 700
    allocations, the cycle collector walks them again and again: a quarter of
    the CPU of a run that changes nothing. Cycles are still collected, less often.
    """
    before = gc.get_threshold()
    gc.set_threshold(first_generation, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()  # what freeze_long_lived set aside: the collector's again


def freeze_long_lived() -> None:
    """Set every object alive now aside from the cycle collector (``gc.freeze``), until the run
    ends (``fewer_gc_passes``). Called once the inventory is mapped: the inventory and the desired
    CIs, hundreds of thousands of objects, live until the run ends, and a collection of the older
    generations during the read or plan would otherwise walk them all again, some 20-30 ms each
    time. Freed by reference counting as ever; only a cycle among them waits for the run's end."""
    gc.freeze()


# -- logs ------------------------------------------------------------------------

def set_run_id(run_id: str) -> None:
    _RUN_ID["value"] = run_id


class RunIdFilter(logging.Filter):
    """Every line carries the run id (worker threads included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = _RUN_ID["value"]
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "run_id": getattr(record, "run_id", "-"),
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line)


def setup_logging(verbose: bool, log_format: str = "auto") -> None:
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RunIdFilter())
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
        "%(asctime)s %(levelname)s [%(run_id)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "pysnow", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # botocore logs a refused AssumeRole with a traceback; the connector
    # reports it once, per account, with the reason.
    logging.getLogger("botocore.credentials").setLevel(logging.ERROR)


# -- stop signals -------------------------------------------------------------------

def stop_requested() -> bool:
    return _STOP.is_set()


def request_stop(signum: int = signal.SIGTERM, _frame: Any = None) -> None:
    logging.getLogger(__name__).warning("%s received: finishing in-flight writes, then stopping",
                                        signal.Signals(signum).name)
    _STOP.set()


def install_stop_handlers() -> None:
    _STOP.clear()
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


# -- the run lock --------------------------------------------------------------------

class RunLock:
    """An exclusive lock on a file: one run at a time per output folder.

    The kernel drops a flock when its process dies, so a lock left by a dead
    process is simply taken over; the pid written inside is for people.
    """

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConnectorError(f"another run holds the lock {self.path} (pid {holder}); not starting") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


# -- schedules -------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, allow_zero: bool = False) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise UsageError(f"{text!r}: a duration is a whole number and a unit: 90s, 30m, 6h, 1d")
    if int(match.group(1)) == 0 and not allow_zero:
        raise UsageError(f"{text!r}: the duration must be more than 0: 90s, 30m, 6h, 1d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def run_every(period: float, jitter: float, once: Callable[[], int]) -> int:
    """Call ``once`` every ``period`` seconds (after a random start delay up to
    ``jitter``), until a stop signal; then return "interrupted".

    A bad mapping file or inventory (a ``UsageError``) in the first run ends the
    schedule, so that a wrong deployment shows at once; in a later run (a mapping
    file edited meanwhile) it is logged and the schedule goes on, as a MID Server
    would: the next run reads the files again."""
    log = logging.getLogger(__name__)
    delay = random.uniform(0, jitter) if jitter else 0.0
    runs = 0
    while not _STOP.wait(delay):
        started = time.monotonic()
        try:
            code = once()
        except UsageError as exc:
            if not runs:
                raise
            log.error("run not made: %s; fix it before the next run", exc)
            code = exc.exit_code
        runs += 1
        log.info("run ended with exit code %d", code)
        if _STOP.is_set():
            return EXIT_INTERRUPTED
        delay = max(0.0, period - (time.monotonic() - started))
        log.info("next run in %.0f s", delay)
    return EXIT_INTERRUPTED
