"""A log that cannot be flooded: the first event at once, then one line per interval."""
from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Log the first event at once, then at most one line per ``interval_s`` that says how
    many were suppressed in between: a node spewing garbage must not flood the log."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, level: int = logging.WARNING,
                 clock=time.monotonic):
        self.logger, self.interval_s, self.level, self.clock = logger, interval_s, level, clock
        self._last: float | None = None
        self.suppressed = 0

    def __call__(self, msg: str, *args) -> bool:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        if self.suppressed:
            msg = msg + f" ({self.suppressed} similar suppressed in the last {self.interval_s:g} s)"
        self.logger.log(self.level, msg, *args)
        self._last, self.suppressed = now, 0
        return True
