"""Compile ahead in worker processes: Triton's compile holds the interpreter lock for most of its work.

Inside :class:`fp4.runtime.autotune.compile_ahead` every kernel the warm-up meets
asks Triton's JIT to compile it (``JITFunction.warmup``).  On threads those
compiles mostly wait for one another and slow the main thread's own compile
beside them (an H100, small model: ~54 s of compiles took 22.6 s on 16 threads
and Dynamo/Inductor's compile went from 15.6 s to 31.6 s; ``benchmarks/RESULTS.md``).
So the warm-up thread instead hands each compile to one of ``N`` worker
processes (:class:`WorkerPool`; :func:`processes`: ``FP4_COMPILE_PROCESSES``, by default up to 16):
Triton's ``jit_cache_hook`` is called before it would compile, with the specialization serialized
(``specialization_data``); the hook records the job and skips the compile in
this process, and a worker imports the same generated module and replays it
(``JITFunction.preload``), which writes Triton's on-disk cache.  The step's
first launch then finds the binary there (same source, same specialization:
the same cache key) and only loads it.

The hook skips a compile only on a thread inside ``compile_ahead`` and only for
a warm-up (never for a launch), so nothing else ever loses a kernel; a Triton
without the hook, or a job a worker could not compile, leaves that kernel to
compile at its first launch, as without the pool, and workers that cannot start leave the compiles on
threads (``FP4_COMPILE_PROCESSES=0`` asks for that).  The workers start when a
graph for a GPU reaches the backend (:func:`start`), so their own start-up
overlaps the graph's tracing and rewriting.  On an H100 the small model's
autotuning first step took 70 s with 16 workers against 126-130 s on threads, and its first step with the
shipped choices 30.7 s against bf16 Inductor's 17.4 s; the GPU test that the workers' kernels give the threads'
results passed (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import Counter
from concurrent.futures import Future

log = logging.getLogger("fp4.compile_pool")

PROCESSES_ENV = "FP4_COMPILE_PROCESSES"
TRITON_CACHE_ENV = "TRITON_CACHE_DIR"

STATS: Counter = Counter()
"""``queued``: warm-up compiles handed to a worker; ``compiled`` / ``failed``: what the workers answered;
``unserialized``: hook calls that did not say what to compile (compiled in this process)."""

_LOCK = threading.Lock()
_POOL = None
_UNAVAILABLE = False  # the workers could not start in this process (start()): compiles stay on threads
_COLLECTING = threading.local()


DEFAULT_MAX_PROCESSES = 16
"""The most worker processes a process starts by default (each holds torch and Triton, ~0.5 GB of host memory)."""


def processes() -> int:
    """Worker processes for compiles ahead: ``FP4_COMPILE_PROCESSES`` (0: compile on threads), by default this
    process's share of the CPUs it may run on (over torchrun's ``LOCAL_WORLD_SIZE``), at most
    :data:`DEFAULT_MAX_PROCESSES`."""
    value = os.environ.get(PROCESSES_ENV)
    if value is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        return max(1, min(DEFAULT_MAX_PROCESSES, cpus // local_ranks))
    try:
        return max(0, int(value))
    except ValueError:
        raise ValueError(f"{PROCESSES_ENV} takes a number of processes, got {value!r}") from None


def _runtime_knobs():
    try:
        from triton import knobs
    except ImportError:
        return None
    runtime = getattr(knobs, "runtime", None)
    return runtime if runtime is not None and hasattr(runtime, "jit_cache_hook") else None


def available() -> bool:
    """Whether this Triton calls a JIT cache hook before compiling (what the pool needs)."""
    return _runtime_knobs() is not None


class WorkerPool:
    """``N`` worker processes, each a ``python -c "...serve()"`` child reading one job per line and answering one
    line per job; jobs are handed out by threads that only wait on the pipes.  The children are started as
    subprocesses, not by :mod:`multiprocessing`, so no child ever imports the user's ``__main__`` (a training
    script without a ``__name__`` guard would otherwise run again in every worker)."""

    def __init__(self, workers: int):
        import queue
        from concurrent.futures import ThreadPoolExecutor

        self.workers = workers
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="fp4-compile-pool")
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._children: list = []

    def start(self) -> None:
        """Start every worker now, idle until a job comes (a worker spends seconds importing torch and Triton)."""
        for _ in range(self.workers - len(self._children)):
            self._idle.put(self._child())

    def submit(self, job: tuple) -> Future:
        """Hand one job (:func:`preload`'s arguments) to the next idle worker; the future holds its function name."""
        return self._threads.submit(self._run, job)

    def _child(self):
        import subprocess
        import sys

        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, sys.path)))
        child = subprocess.Popen(
            [sys.executable, "-c", "from fp4.runtime.compile_pool import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment,
        )  # fmt: skip
        self._children.append(child)
        return child

    def _run(self, job: tuple) -> str:
        import json
        import queue

        try:
            child = self._idle.get_nowait()
        except queue.Empty:
            child = self._child()
        try:
            child.stdin.write(json.dumps(list(job)) + "\n")
            child.stdin.flush()
            line = child.stdout.readline()
        except OSError as error:
            raise RuntimeError(f"compile worker {child.pid} is gone: {error}") from None
        if not line:
            raise RuntimeError(f"compile worker {child.pid} exited ({child.poll()})")
        self._idle.put(child)
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["name"]

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        for child in self._children:
            try:
                child.stdin.close()
                child.wait(timeout=5)
            except Exception:  # noqa: BLE001  (exiting anyway)
                child.kill()


def serve() -> None:
    """A worker's loop: one JSON job per line on stdin (``preload``'s arguments), one JSON line back per job."""
    import json
    import sys

    replies = sys.stdout
    sys.stdout = sys.stderr  # whatever a compile prints must not mix with the replies
    try:  # what every compile needs first, done while the parent still traces and rewrites the graph
        from triton.runtime.driver import driver

        driver.active.get_current_device()
    except Exception:  # noqa: BLE001  (the jobs report whatever this was)
        pass
    for line in sys.stdin:
        try:
            reply = {"name": preload(*json.loads(line))}
        except Exception as error:  # noqa: BLE001  (reported to the parent, which compiles it itself)
            reply = {"error": f"{type(error).__name__}: {error}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def _pool(workers: int) -> WorkerPool:
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = WorkerPool(workers)
            atexit.register(_POOL.shutdown)
        return _POOL


def workers_in_use() -> int:
    """The worker processes compiles ahead go to: ``FP4_COMPILE_PROCESSES`` where this Triton has the hook, else 0
    (the thread pool)."""
    workers = processes()
    return workers if workers and available() and not _UNAVAILABLE else 0


def start() -> int:
    """Start the worker processes compiles ahead will use (:func:`workers_in_use`); returns how many.  Called when a
    graph for a GPU reaches the backend, before AOTAutograd traces it and the passes rewrite it, so the workers'
    start (importing torch and Triton, finding the device) is over when the warm-up hands them their first
    compiles."""
    global _UNAVAILABLE
    workers = workers_in_use()
    if workers:
        try:
            _pool(workers).start()
        except OSError as error:  # no processes here: compile on threads, as with FP4_COMPILE_PROCESSES=0
            log.warning("compile worker processes could not start (%s); compiling on threads", error)
            _UNAVAILABLE = True
            return 0
    return workers


def job_of(fn_info, compile_kwargs: dict) -> tuple | None:
    """``(module name, module path, function name, specialization data, Triton cache directory)`` of a compile the
    JIT is about to run, from the hook's arguments; None where they do not say (another Triton): that kernel compiles
    here."""
    function = getattr(fn_info, "jit_function", None)
    inner = getattr(function, "fn", None)
    data = (compile_kwargs or {}).get("specialization_data")
    code = getattr(inner, "__code__", None)
    if inner is None or code is None or not isinstance(data, str):
        return None
    return inner.__module__, code.co_filename, inner.__name__, data, os.environ.get(TRITON_CACHE_ENV, "")


def preload(module_name: str, path: str, function_name: str, specialization_data: str, triton_cache: str = "") -> str:
    """In a worker: import the generated kernel module as the parent did and compile the recorded specialization
    into Triton's cache (the parent's ``TRITON_CACHE_DIR`` when the job was queued, ``triton_cache``); returns the
    function name.

    The compiled kernel's launcher is built here too: Triton compiles a small C module per argument signature at
    a kernel's first launch (``CompiledKernel._init_handles``, cached on disk by its source), so made here, the
    parent's first launch only loads it.  A Triton without that step, or one that fails here, leaves it to the
    parent's first launch, which reports any error itself."""
    from pathlib import Path

    from .cache import _import_kernel

    if triton_cache:
        os.environ[TRITON_CACHE_ENV] = triton_cache
    else:
        os.environ.pop(TRITON_CACHE_ENV, None)
    function = _import_kernel(Path(path), function_name, module_name, interpret=False)  # warm-ups are GPU only
    kernel = function.preload(specialization_data)
    init_handles = getattr(kernel, "_init_handles", None)
    if init_handles is not None:
        try:
            init_handles()
        except Exception as error:  # noqa: BLE001  (the first launch builds it, or says why it cannot)
            log.info("%s: launcher not built in the worker: %s", function_name, error)
    return function_name


_PREVIOUS_HOOK = None
_INSTALLED = False


def _hook(*args, **kwargs):
    """Triton's ``jit_cache_hook``: a truthy result skips the compile in this process.  Skips only a warm-up on a
    thread that is collecting; never raises (a hook error would fail the compile)."""
    if _PREVIOUS_HOOK is not None:
        previous = _PREVIOUS_HOOK(*args, **kwargs)
        if previous:
            return previous
    collector = getattr(_COLLECTING, "active", None)
    if collector is None or not kwargs.get("is_manual_warmup"):  # another thread, or a launch: compile here
        return None
    try:
        job = job_of(kwargs.get("fn"), kwargs.get("compile"))
        if job is None:
            STATS["unserialized"] += 1
            return None
        collector.futures.append(_pool(collector.workers).submit(job))
        STATS["queued"] += 1
    except Exception as error:  # noqa: BLE001  (the kernel compiles here instead)
        log.info("compile in a worker not queued: %s", error)
        return None
    return True


def _install() -> None:
    global _PREVIOUS_HOOK, _INSTALLED
    with _LOCK:
        if not _INSTALLED:
            runtime = _runtime_knobs()
            _PREVIOUS_HOOK, runtime.jit_cache_hook = runtime.jit_cache_hook, _hook
            _INSTALLED = True


class Collector:
    """``with Collector(workers):`` the JIT's warm-up compiles on this thread go to the worker pool; leaving the
    block waits for them.  Other threads, and launches, compile as always."""

    def __init__(self, workers: int):
        self.workers = workers
        self.futures: list[Future] = []

    def __enter__(self):
        _install()
        _COLLECTING.active = self
        return self

    def __exit__(self, *exc):
        _COLLECTING.active = None
        self.wait()
        return False

    def wait(self) -> int:
        """Wait for every job; returns how many compiled (a failed one is logged: it compiles at its first launch)."""
        done = 0
        for future in self.futures:
            try:
                future.result()
                done += 1
                STATS["compiled"] += 1
            except Exception as error:  # noqa: BLE001  (the step compiles it itself)
                STATS["failed"] += 1
                log.info("compile in a worker failed: %s", error)
        self.futures = []
        return done
