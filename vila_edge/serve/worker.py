"""The one thread that owns the model: jobs wait in a bounded FIFO and run one at a time (first come, first served:
chat requests and alert-rule evaluations alike), so nothing else ever touches the engine. A full queue refuses at
once (the server answers 429); a job's text reaches the asyncio side as it is generated; a cancelled job (its
client went away) stops at its next token."""

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


class Cancelled(Exception):
    """Raised inside a job whose caller no longer waits for it."""


class QueueFull(Exception):
    pass


@dataclass
class Job:
    """`run(on_text)` is called on the worker thread; its result (or exception) and its text go to `events`."""

    run: Callable[[Callable[[str], None]], object]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)

    def _put(self, event: tuple) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def on_text(self, text: str) -> None:
        if self.cancelled.is_set():
            raise Cancelled
        if text:
            self._put(("text", text))


class Worker:
    def __init__(self, max_queue: int, on_cancel: Callable[[], None] = lambda: None):
        self.jobs: queue.Queue = queue.Queue(maxsize=max_queue)
        self.on_cancel = on_cancel
        self.busy = False
        self.thread = threading.Thread(target=self._loop, name="vila-edge-model", daemon=True)
        self.thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting, plus the one running."""
        return self.jobs.qsize() + int(self.busy)

    def submit(self, job: Job) -> Job:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():  # its caller left while it waited
                self.on_cancel()
                continue
            self.busy = True
            try:
                job._put(("done", job.run(job.on_text)))
            except Cancelled:
                self.on_cancel()
                job._put(("cancelled", None))
            except Exception as e:  # the request's own failure: reported to it, the worker goes on
                job._put(("error", e))
            finally:
                self.busy = False
