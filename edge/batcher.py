"""The score stage's deadline batcher: frames in, engine batches out.

A batch goes to the engine when it holds ``max_batch`` frames, or when its oldest
frame has waited ``max_delay_s`` (Triton's dynamic batcher and its
``max_queue_delay_microseconds``). So a saturated stream runs full batches (the
frames left over after a full batch wait for the next ones instead of running as
a small call), and no frame waits longer than the deadline for company.

One refinement keeps a camera's pace from paying the deadline on every frame: a
stream is *sparse* once ``SPARSE_AFTER`` partial batches in a row went out at
their deadline holding a single arrival (nobody came to join). A sparse stream's
frames go at once. It is dense again as soon as frames are found queued behind a
batch (they arrived while the engine ran) or a second arrival joins a batch.

Pure bookkeeping (no sockets, no clock of its own: callers pass ``now``), so the
policy is tested with a fake clock and the stage stays a loop of receive / take.
"""
from __future__ import annotations

SPARSE_AFTER = 2   # lonely partial batches in a row before a stream counts as sparse


class DeadlineBatcher:
    def __init__(self, max_batch: int, max_delay_s: float) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if not max_delay_s >= 0:
            raise ValueError(f"the batch deadline must be >= 0 s, got {max_delay_s}")
        self.max_batch, self.max_delay_s = int(max_batch), float(max_delay_s)
        self.items: list[dict] = []
        self.pixels: list = []
        self._since: float | None = None   # when the oldest pending frame arrived
        self._arrivals = 0                 # arrivals (messages) in the pending batch
        self._lonely = 0                   # partial batches in a row that went alone at their deadline

    def __len__(self) -> int:
        return len(self.items)

    @property
    def oldest_since(self) -> float | None:
        """When the oldest pending frame arrived (None: nothing pending)."""
        return self._since

    @property
    def sparse(self) -> bool:
        return self._lonely >= SPARSE_AFTER

    def add(self, items: list[dict], pixels: list, now: float, queued: bool = False) -> None:
        """Frames of one arrival (one message). ``queued``: it was already waiting when the stage
        came back from the engine, i.e. the stream is not sparse."""
        if not items:
            return
        if queued or self.items:   # company: a backlog, or a second arrival for this batch
            self._lonely = 0
        if not self.items:
            self._since, self._arrivals = now, 0
        self._arrivals += 1
        self.items += items
        self.pixels += pixels

    def drop_oldest(self, keep: int) -> list[dict]:
        """Keep only the newest ``keep`` pending frames (drop mode); returns the dropped items."""
        n = len(self.items) - keep
        if n <= 0:
            return []
        dropped, self.items, self.pixels = self.items[:n], self.items[n:], self.pixels[n:]
        return dropped

    def wait_s(self, now: float) -> float | None:
        """Seconds until the pending frames must go (0: now); None when nothing is pending."""
        if not self.items:
            return None
        if len(self.items) >= self.max_batch or self.sparse:
            return 0.0
        return max(0.0, self._since + self.max_delay_s - now)

    def take(self, now: float, flush: bool = False) -> list[tuple[list[dict], list]]:
        """The batches due now: every full one, then the partial rest if its deadline has passed,
        the stream is sparse, or ``flush`` (end of stream, an event to pass on in order)."""
        out = []
        while len(self.items) >= self.max_batch:
            out.append((self.items[:self.max_batch], self.pixels[:self.max_batch]))
            self.items, self.pixels = self.items[self.max_batch:], self.pixels[self.max_batch:]
            self._arrivals = 1 if self.items else 0   # the rest waits as a batch of its own
            self._since = now if self.items else None
        if self.items and (flush or self.sparse or now >= self._since + self.max_delay_s):
            if not flush and self._arrivals == 1:
                self._lonely += 1
            out.append((self.items, self.pixels))
            self.items, self.pixels, self._since, self._arrivals = [], [], None, 0
        return out
