"""Where evaluations run: in-process, a local process pool, or a Ray cluster.

All executors share one small interface -- :meth:`~Executor.submit` a :class:`Task`,
:meth:`~Executor.wait_one` for the next :class:`TaskResult` in completion order -- and
never raise for a failed evaluation: an exception inside the evaluator, an out-of-memory
error or a lost worker process becomes a result with ``error`` set, which the search
records and retries once.  Results depend only on the task (genotype + seed), so every
executor yields the same results; only ``worker`` and timings differ.

Ray is imported only when a :class:`RayExecutor` is created.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import socket
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nasfcos.errors import BackendUnavailable, FieldError, NasfcosError, first_line
from nasfcos.search.evaluators import Evaluator, check_result


@dataclass(frozen=True)
class Task:
    """One evaluation: the genotype document (no meta), its evaluation seed, and where it
    sits in the search (``step``, ``index``); ``attempt`` counts from 1."""

    step: int
    index: int
    seed: int
    genotype: dict[str, Any]
    attempt: int = 1

    @property
    def key(self) -> tuple[int, int]:
        return (self.step, self.index)


@dataclass
class TaskResult:
    """Outcome of a :class:`Task`: ``result`` (the evaluator's dict) or ``error`` (one line
    plus, in ``detail``, the traceback), the worker that ran it and its wall time (s)."""

    task: Task
    result: dict[str, Any] | None
    error: str | None
    worker: str
    wall_s: float
    detail: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def worker_name() -> str:
    """``host:pid`` of the calling process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def error_text(exc: BaseException) -> str:
    """A failed trial's error as recorded in the archive: ``Type: first line``, at most 500
    characters (just ``Type`` for an empty message)."""
    name, line = type(exc).__name__, first_line(exc, None)
    return (name if line == name else f"{name}: {line}")[:500]


def run_task(evaluator: Evaluator, task: Task) -> TaskResult:
    """Run one task here, turning any exception (``MemoryError``, CUDA OOM, ...) into an error."""
    from nasfcos.genotypes import parse_genotype

    t0 = time.perf_counter()
    try:
        g = parse_genotype(task.genotype)
        res = check_result(evaluator(g, task.seed))
        return TaskResult(task, res, None, worker_name(), time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a failed evaluation must never end the search
        return TaskResult(task, None, error_text(exc), worker_name(), time.perf_counter() - t0,
                          detail=traceback.format_exc(limit=20))


class Executor:
    """Interface; see the module docstring."""

    workers = 1

    def submit(self, task: Task) -> None:
        raise NotImplementedError

    def wait_one(self) -> TaskResult:
        """Block until a submitted task finishes; its result (completion order)."""
        raise NotImplementedError

    def pending(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (pending tasks are cancelled)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineExecutor(Executor):
    """Runs each task in this process when its result is asked for (``--workers 0``)."""

    workers = 0

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self._queue: deque[Task] = deque()

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    def wait_one(self) -> TaskResult:
        if not self._queue:
            raise RuntimeError("wait_one() with nothing submitted")
        return run_task(self.evaluator, self._queue.popleft())

    def pending(self) -> int:
        return len(self._queue)


# ------------------------------------------------------------------------------------------
# local process pool
# ------------------------------------------------------------------------------------------
_WORKER_EVALUATOR: Evaluator | None = None


#: Seconds between a worker's checks that its driver is still alive.
PARENT_POLL_S = 0.5


def _watch_parent(parent_pid: int) -> None:
    """Daemon thread of a worker: exit at once when the driver process is gone (``kill -9``
    of the driver must not leave workers, nor the resource tracker they keep alive)."""
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(1)


def _init_worker(evaluator: Evaluator, threads: int, parent_pid: int) -> None:
    global _WORKER_EVALUATOR
    import threading

    threading.Thread(target=_watch_parent, args=(parent_pid,), name="nasfcos-parent-watch",
                     daemon=True).start()
    _WORKER_EVALUATOR = evaluator
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)


def _pool_task(task: Task) -> TaskResult:
    assert _WORKER_EVALUATOR is not None, "worker not initialised"
    return run_task(_WORKER_EVALUATOR, task)


class LocalExecutor(Executor):
    """``workers`` processes (``spawn``), each holding one copy of the evaluator.

    A worker that dies (killed by the OS for memory, segfault) breaks the pool: every task
    in flight is reported as failed with ``worker lost`` and the pool is rebuilt for the
    next submission.  ``threads`` is the torch thread count per worker (default: CPU cores
    divided by workers).
    """

    def __init__(self, evaluator: Evaluator, workers: int = 1, *, threads: int | None = None) -> None:
        if workers < 1:
            raise FieldError("workers", f"must be at least 1 for the local pool, got {workers}")
        self.evaluator = evaluator
        self.workers = workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self._pool: cf.ProcessPoolExecutor | None = None
        self._futures: dict[cf.Future[TaskResult], Task] = {}
        self._lost: deque[TaskResult] = deque()

    def _ensure_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.evaluator, self.threads, os.getpid()),
            )
        return self._pool

    def submit(self, task: Task) -> None:
        try:
            fut = self._ensure_pool().submit(_pool_task, task)
        except cf.process.BrokenProcessPool:
            self._reset()
            fut = self._ensure_pool().submit(_pool_task, task)
        self._futures[fut] = task

    def wait_one(self) -> TaskResult:
        if self._lost:
            return self._lost.popleft()
        if not self._futures:
            raise RuntimeError("wait_one() with nothing submitted")
        done, _ = cf.wait(list(self._futures), return_when=cf.FIRST_COMPLETED)
        fut = min(done, key=lambda f: self._futures[f].key)
        task = self._futures.pop(fut)
        try:
            return fut.result()
        except cf.process.BrokenProcessPool as exc:
            # the pool is unusable: report every task in flight as lost, rebuild on next submit
            lost = [task] + list(self._futures.values())
            self._futures.clear()
            self._reset()
            msg = f"worker lost: a worker process died ({exc.__class__.__name__})"
            for t in lost[1:]:
                self._lost.append(TaskResult(t, None, msg, "local:lost", 0.0))
            return TaskResult(lost[0], None, msg, "local:lost", 0.0)
        except Exception as exc:  # noqa: BLE001 - e.g. the result could not be unpickled
            return TaskResult(task, None, f"{type(exc).__name__}: {exc}", "local:?", 0.0)

    def pending(self) -> int:
        return len(self._futures) + len(self._lost)

    def _reset(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        """Cancel what is pending and stop the workers; evaluations still running are killed
        (Ctrl-C or an error in the driver must not wait for them, nor leave them running)."""
        running = any(not f.done() for f in self._futures)
        for f in self._futures:
            f.cancel()
        self._futures.clear()
        if self._pool is not None:
            procs = list((getattr(self._pool, "_processes", None) or {}).values())
            if running:
                for proc in procs:
                    if proc.is_alive():
                        proc.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# ------------------------------------------------------------------------------------------
# Ray
# ------------------------------------------------------------------------------------------
class RayExecutor(Executor):
    """Evaluations as Ray tasks; the controller stays on the driver.

    ``address``: ``None`` starts (or reuses) a local Ray instance, ``"auto"`` joins the
    cluster of this node, ``"HOST:PORT"`` a remote one.  The evaluator is put into the
    object store once; each task receives it by reference.  Worker nodes must see the same
    feature-cache path (shared storage) and have nasfcos installed.  Ray's own retries are
    disabled (``max_retries=0``); the search retries failed evaluations itself.
    """

    def __init__(self, evaluator: Evaluator, address: str | None = None, *, num_cpus: float = 1,
                 num_gpus: float = 0, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise BackendUnavailable(
                "the Ray executor needs ray: pip install 'nasfcos[dist]'"
            ) from exc
        self._ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise BackendUnavailable(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
        self.workers = workers or int(ray.cluster_resources().get("CPU", 1) // max(num_cpus, 1e-9))
        self._remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(run_task)
        self._evaluator_ref = ray.put(evaluator)
        self._refs: dict[Any, Task] = {}

    def submit(self, task: Task) -> None:
        ref = self._remote.remote(self._evaluator_ref, task)
        self._refs[ref] = task

    def wait_one(self) -> TaskResult:
        if not self._refs:
            raise RuntimeError("wait_one() with nothing submitted")
        ray = self._ray
        done, _ = ray.wait(list(self._refs), num_returns=1)
        ref = done[0]
        task = self._refs.pop(ref)
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:  # lost worker/node, OOM kill, task error
            return TaskResult(task, None, error_text(exc), "ray:lost", 0.0)

    def pending(self) -> int:
        return len(self._refs)

    def close(self) -> None:
        for ref in list(self._refs):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        self._refs.clear()


def make_executor(kind: str, evaluator: Evaluator, *, workers: int | None = None,
                  address: str | None = None, threads: int | None = None, cpus_per_trial: float = 1,
                  gpus_per_trial: float = 0) -> Executor:
    """``local`` (``workers`` processes; 0 = in this process) or ``ray`` (each task asks Ray for
    ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs)."""
    if kind == "local":
        n = 1 if workers is None else workers
        if n == 0:
            return InlineExecutor(evaluator)
        return LocalExecutor(evaluator, n, threads=threads)
    if kind == "ray":
        return RayExecutor(evaluator, address, workers=workers, num_cpus=cpus_per_trial, num_gpus=gpus_per_trial)
    raise NasfcosError(f"unknown executor {kind!r} (expected local or ray)")
