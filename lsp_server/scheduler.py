"""One worker thread that owns the model, so the JSON-RPC loop never waits for it.

Jobs run one at a time in submission order. Each job has a *key* (a document URI, or the model itself): a new job
for a key supersedes the live one, as a new completion request for a document supersedes the older one
(Copilot's "cancel previous"). A superseded job that has not started is dropped at once; a running one is asked
to stop through :attr:`Job.cancelled`, which the engine polls between denoising steps. Either way its future
fails with :class:`JobCancelled`, also when the work happened to finish first, so a superseded request never
gets a late answer.

Futures are asyncio futures of the server's loop; the worker settles them through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

class JobCancelled(Exception):
    """The job was superseded or cancelled before it produced a result."""


class Job:
    """A unit of work for the worker; ``work(job)`` may poll ``job.cancelled``."""

    def __init__(self, key: Hashable, work: Callable[[Job], Any], future: asyncio.Future) -> None:
        self.key = key
        self.work = work
        self.future = future
        self.started = False  # set by the worker when it begins the work
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class Scheduler:
    """Runs jobs on one worker thread; ``on_activity(busy)`` is called on the loop when the worker starts or idles."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_activity: Callable[[bool], None] | None = None) -> None:
        self._loop = loop
        self._on_activity = on_activity
        self._lock = threading.Condition()
        self._queue: deque[Job] = deque()
        self._live: dict[Hashable, Job] = {}  # the newest job per key, queued or running
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="diffgemma-model", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, work: Callable[[Job], Any]) -> Job:
        """Queue ``work`` under ``key``, superseding the live job with that key. Call from the loop thread."""
        job = Job(key, work, self._loop.create_future())
        with self._lock:
            if self._stopping:
                job.future.set_exception(JobCancelled("the server is shutting down"))
                return job
            self._supersede_locked(key)
            self._live[key] = job
            self._queue.append(job)
            self._lock.notify()
        return job

    def supersede(self, key: Hashable) -> bool:
        """Cancel the live job for ``key``, if any; returns whether there was one. Call from the loop thread."""
        with self._lock:
            return self._supersede_locked(key)

    def cancel(self, job: Job) -> None:
        """Cancel one job (e.g. its request was cancelled by the client). Call from the loop thread."""
        with self._lock:
            if self._live.get(job.key) is job:
                self._supersede_locked(job.key)

    def stop(self) -> None:
        """Cancel every job and let the worker exit after the current one."""
        with self._lock:
            self._stopping = True
            for key in list(self._live):
                self._supersede_locked(key)
            self._lock.notify()

    def _supersede_locked(self, key: Hashable) -> bool:
        job = self._live.pop(key, None)
        if job is None:
            return False
        job.cancel()
        if not job.started:
            self._queue.remove(job)
            if not job.future.done():
                job.future.set_exception(JobCancelled())
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping and not self._queue:
                    return
                job = self._queue.popleft()
                job.started = True
            self._post(self._on_activity, True)
            try:
                result, error = job.work(job), None
            except Exception as exc:  # every failure goes to the request that asked, the worker carries on
                result, error = None, exc
            if job.cancelled():
                result, error = None, JobCancelled()
            with self._lock:
                if self._live.get(job.key) is job:
                    del self._live[job.key]
                idle = not self._queue
            self._post(_settle, job.future, result, error)
            if idle:
                self._post(self._on_activity, False)

    def _post(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the server is exiting and nobody waits for the answer
            pass


def _settle(future: asyncio.Future, result: Any, error: Exception | None) -> None:
    if future.done():  # the awaiting request was cancelled, which cancels the future too
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
