"""Poll every check on its own interval in the asyncio loop and report value changes.

Blocking probes (psutil scans, ICMP, ARP, sysfs) run in a small thread pool owned by
the runner, so the loop (heartbeats, lease renewals) never waits on them; coroutine
probes run on the loop. A probe that raises or exceeds its timeout is an observation of
``None``: each decision treats that as a failure. Inactive checks (module state, or
``checker off``/``errd off``) are not polled and their resource goes back to ``init``.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from .resource import INIT, Resource, ResourceTable

log = logging.getLogger("hacluster.checkers.runner")


@dataclass
class Check:
    resource: str                    # class.ident
    interval_s: float
    probe: Callable[[], Any]         # plain function (run in the pool) or coroutine function
    decide: Callable[[Any], str]     # observation (None on probe failure) -> init|up|down
    timeout_s: float | None = None   # bound on one probe; default: the interval
    when: str = "both"               # prim|second|both|pre (see resource.is_active)
    reset: Callable[[], None] | None = None  # forget debounce state when deactivated
    blocking: bool = True            # False: call probe on the loop (it must be quick, or async)

    @property
    def klass(self) -> str:
        return self.resource.partition(".")[0]


class CheckRunner:
    """Runs checks; ``on_change(resource)`` is called on the loop for every new value."""

    def __init__(self, table: ResourceTable, on_change: Callable[[Resource], None],
                 clock: Callable[[], float] = time.monotonic, max_threads: int = 4) -> None:
        self.table = table
        self.on_change = on_change
        self.clock = clock
        self._checks: dict[str, Check] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._active: Callable[[Check], bool] = lambda check: True
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="checker")
        # a blocking probe still stuck in the pool is not started again: one hung probe
        # holds one thread, never the whole pool
        self._running: dict[str, asyncio.Future[Any]] = {}
        self._stopping = False

    def add(self, check: Check) -> None:
        if check.resource in self._checks:
            raise ValueError(f"check {check.resource} is added twice")
        if check.interval_s <= 0:
            raise ValueError(f"check {check.resource}: interval must be greater than zero")
        self.table.declare(check.resource, self.clock())
        self._checks[check.resource] = check

    def start(self) -> None:
        """Start polling (call from the loop)."""
        for name, check in self._checks.items():
            if name not in self._tasks:
                self._wake[name] = asyncio.Event()
                self._tasks[name] = asyncio.create_task(self._poll(check), name=f"check:{name}")

    async def stop(self) -> None:
        # the flag as well as cancel(): Python 3.11's wait_for/timeout can swallow a
        # cancellation that lands as their own deadline expires
        self._stopping = True
        for name, task in self._tasks.items():
            self._wake[name].set()
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def set_active(self, predicate: Callable[[Check], bool]) -> None:
        """Which checks run, e.g. ``lambda c: is_active(c.when, state) and flags.polls(c.resource)``.
        Re-evaluated now: checks that stop running go back to init."""
        self._active = predicate
        for name, check in self._checks.items():
            if not predicate(check):
                self._deactivate(check)
            if name in self._wake:
                self._wake[name].set()

    def poll_now(self, resource: str) -> None:
        """Probe ``resource`` at once instead of at its next interval."""
        self._wake[resource].set()

    async def probe_once(self, check: Check) -> str:
        """One probe + decision + report; returns the value reported."""
        observation = None
        timeout = check.timeout_s if check.timeout_s is not None else check.interval_s
        try:
            async with asyncio.timeout(timeout):
                observation = await self._observe(check)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a probe failure is an observation, not a crash
            log.info("event=probe_failed resource=%s error=%r", check.resource, exc)
        value = check.decide(observation)
        if self._active(check) and not self._stopping:  # the module may have changed state during the probe
            self._report(check.resource, value)
        return value

    async def _observe(self, check: Check) -> Any:
        if inspect.iscoroutinefunction(check.probe) or not check.blocking:
            result = check.probe()
            return await result if inspect.isawaitable(result) else result
        pending = self._running.get(check.resource)
        if pending is not None and not pending.done():
            raise TimeoutError("the previous probe has not returned yet")
        future = asyncio.get_running_loop().run_in_executor(self._pool, check.probe)
        self._running[check.resource] = future
        # shield: a timeout abandons the wait, not the thread's result (kept for the check above)
        result = await asyncio.shield(future)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(f"check {check.resource}: probe returned an awaitable; set blocking=False")
        return result

    def _report(self, name: str, value: str) -> None:
        changed = self.table.set(name, value, self.clock())
        if changed is not None:
            log.info("event=resource_changed resource=%s value=%s", name, value)
            self.on_change(changed)

    def _deactivate(self, check: Check) -> None:
        if check.reset is not None:
            check.reset()
        self._report(check.resource, INIT)

    async def _poll(self, check: Check) -> None:
        wake = self._wake[check.resource]
        while not self._stopping:
            wake.clear()
            if self._active(check) and not self._stopping:
                started = self.clock()
                await self.probe_once(check)
                delay = max(0.0, check.interval_s - (self.clock() - started))
            else:
                delay = None  # sleep until set_active or poll_now wakes us
            try:
                await asyncio.wait_for(wake.wait(), delay)
            except TimeoutError:
                pass
