"""Stopping: one shared stop for every thread, and SIGINT/SIGTERM turned into it.

A :class:`Stopper` is the one stop event every thread of a run watches, with the reason the run
stopped (the first one given wins), which each stream's summary records as ``ended_by``.

:class:`SignalGuard` installs the handlers while a run streams. The first SIGINT or SIGTERM stops
every stream and raises :class:`Interrupted` in the main thread, which then finalizes every
output (the streams' own threads finish the frame they are on: nothing is cut in half). A second
signal while the outputs are being finalized means the user will not wait: the process exits at
once with 128 + the signal number, keeping everything already written (events are flushed line by
line; an MP4 recording is fragmented, so what was written plays).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# logrotate's convention: reopen the log files. Not on Windows.
SIGHUP = getattr(signal, "SIGHUP", None)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the stream stops cleanly; the exit code is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Stopper:
    """The shared stop: an event every thread waits on, the reason, and who to wake."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._wakers: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self.event.is_set()

    def on_stop(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when the stop comes (at once if it came already): it notifies a
        condition that some thread waits on, so that the wait ends now rather than at its timeout."""
        with self._lock:
            if not self.event.is_set():
                self._wakers.append(wake)
                return
        wake()

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            self.event.set()
            wakers, self._wakers = self._wakers, []
        for wake in wakers:
            wake()


class SignalGuard:
    """SIGINT/SIGTERM (and SIGHUP) handlers for one run (only in the main thread; elsewhere it
    does nothing)."""

    def __init__(self, stopper: Stopper) -> None:
        self._stopper = stopper
        self.finalizing = False
        self.signum: int | None = None
        # SIGHUP only raises this flag: the main thread reopens the events file between two lines
        # (a handler that took the writer's lock could deadlock the thread it interrupted).
        self.hangups = 0

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            # The user asked twice: stop finalizing and go. Lines already written are whole.
            sys.stdout.flush()
            print(
                f"epic-stream: {name} again while finalizing: exiting now, keeping what was written",
                file=sys.stderr,
                flush=True,
            )
            os._exit(128 + signum)
        self.signum = signum
        self._stopper.stop(name)
        if not self.finalizing:
            raise Interrupted(signum)
        # A first signal during finalization is noted (the exit code says so) and lets it finish.

    def _hangup(self, signum: int, frame) -> None:
        self.hangups += 1

    @contextmanager
    def installed(self) -> Iterator[SignalGuard]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        if SIGHUP is not None:
            previous[SIGHUP] = signal.signal(SIGHUP, self._hangup)
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
