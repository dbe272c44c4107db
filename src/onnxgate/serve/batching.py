"""Running requests on the session: directly, or merged by a dynamic batcher within the verified batch domain.

onnxruntime's ``run`` releases the GIL, so runs go to a small thread pool (``runs`` at a time: one when the
session's intra-op pool already uses every core) and the event loop keeps accepting requests meanwhile.

With ``max_batch``, concurrent requests whose non-batch dims agree are concatenated along the batch dim (the leading
dim every input and output shares, see ``contract._batch_dim``) into one run of at most ``max_batch`` rows, waiting
at most ``timeout_ms`` after the oldest queued request for others to join; the outputs are split back by rows. A
merged size must itself lie in the verified batch domain (``B: multiples of 8 in 8..64`` cannot merge 8 + 4): when it
does not, the requests run one by one, each of which was already checked. Closing drains the queue: every request
accepted is answered.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Pending:
    feed: dict[str, np.ndarray]
    rows: int
    key: tuple
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Executor:
    def __init__(self, model, metrics, *, max_batch: int | None = None, timeout_ms: float = 2.0,
                 runs: int | None = None):
        self.model, self.metrics = model, metrics
        self.max_batch, self.timeout = max_batch, max(0.0, timeout_ms) / 1000.0
        cores = os.cpu_count() or 1
        self.runs = runs or (1 if model.threads == 0 else max(1, cores // max(1, model.threads)))
        self.pool = ThreadPoolExecutor(max_workers=self.runs, thread_name_prefix="onnxgate-run")
        self.output_names = [o.name for o in model.outputs]
        self._items: deque[_Pending] = deque()
        self._wake: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop_task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._closed = False

    async def start(self) -> None:
        if self.max_batch:
            self._wake, self._slots = asyncio.Event(), asyncio.Semaphore(self.runs)
            self._loop_task = asyncio.create_task(self._batch_loop())

    async def close(self) -> None:
        """Answer everything queued, wait for runs in flight, then stop the pool."""
        self._closed = True
        if self._wake is not None:
            self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self.pool.shutdown(wait=True)

    def run_sync(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self.model.session.run(self.output_names, feed)
        self.metrics.inference.observe(time.perf_counter() - start)
        rows = next(iter(feed.values())).shape[0] if feed and next(iter(feed.values())).ndim else 1
        self.metrics.batch_size.observe(rows)
        return dict(zip(self.output_names, outputs))

    async def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs on ``feed`` (already checked against the contract)."""
        loop = asyncio.get_running_loop()
        if not self.max_batch or self._closed or self._loop_task is None:
            self.metrics.merged.observe(1)
            return await loop.run_in_executor(self.pool, self.run_sync, feed)
        first = next(iter(feed.values()))
        key = tuple((name, a.shape[1:], a.dtype.str) for name, a in feed.items())
        pending = _Pending(feed, int(first.shape[0]), key, loop.create_future())
        self._items.append(pending)
        self._wake.set()
        return await pending.future

    async def _batch_loop(self) -> None:
        while self._items or not self._closed:
            if not self._items:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather(self._items[0])
            batch = self._take(self._items[0].key)
            await self._slots.acquire()
            task = asyncio.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _gather(self, oldest: _Pending) -> None:
        """Wait until the oldest request has waited ``timeout``, enough rows are queued, or the server closes."""
        while not self._closed:
            ready = sum(p.rows for p in self._items if p.key == oldest.key)
            left = oldest.arrived + self.timeout - time.monotonic()
            if ready >= self.max_batch or left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take(self, key: tuple) -> list[_Pending]:
        batch, rows, kept = [], 0, deque()
        while self._items:
            item = self._items.popleft()
            if item.key == key and (not batch or rows + item.rows <= self.max_batch):
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        self._items.extendleft(reversed(kept))
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            rule = self.model.batch_rule
            total = sum(p.rows for p in batch)
            groups = [batch] if len(batch) == 1 or (rule is not None and rule.allows(total)) else [[p] for p in batch]
            for group in groups:
                await self._run_group(loop, group)
        finally:
            self._slots.release()

    async def _run_group(self, loop, group: list[_Pending]) -> None:
        live = [p for p in group if not p.future.done()]  # a client that went away cancels its future
        if not live:
            return
        feed = live[0].feed if len(live) == 1 else {
            name: np.concatenate([p.feed[name] for p in live]) for name in live[0].feed}
        self.metrics.merged.observe(len(live))
        try:
            outputs: dict[str, Any] = await loop.run_in_executor(self.pool, self.run_sync, feed)
        except Exception as exc:  # noqa: BLE001  every waiting request gets the failure (a 500 with an id)
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        start = 0
        for p in live:
            if not p.future.done():
                p.future.set_result({n: v[start:start + p.rows] for n, v in outputs.items()})
            start += p.rows
