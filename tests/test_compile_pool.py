"""Compiles ahead in worker processes (``FP4_COMPILE_PROCESSES``): the JIT hook, the jobs, the worker's replay.

The GPU side (Triton's ``preload`` filling its cache, the step's first launch finding it) needs a GPU; here the
hook's guard (only a warm-up, only on a collecting thread, never an error), the job it records, and a real
worker process importing a generated module and replaying the recorded specialization are checked.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from fp4.runtime import autotune, compile_pool


class _Executor:
    def __init__(self):
        self.jobs = []

    def submit(self, job):
        from concurrent.futures import Future

        self.jobs.append(job)
        future = Future()
        future.set_result(job[2])
        return future


def _kernel_function():
    pass


def _hook_arguments(warmup=True, data='{"name": "k"}'):
    info = SimpleNamespace(module="m", name="k", jit_function=SimpleNamespace(fn=_kernel_function))
    return dict(key="key", repr="k[...]", fn=info, compile={"key": "key", "specialization_data": data},
                is_manual_warmup=warmup, already_compiled=False)  # fmt: skip


def test_processes_come_from_the_environment(monkeypatch):
    monkeypatch.delenv(compile_pool.PROCESSES_ENV, raising=False)
    monkeypatch.setattr(compile_pool.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert compile_pool.processes() == compile_pool.DEFAULT_MAX_PROCESSES  # by default: the CPUs, at most 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert compile_pool.processes() == 8  # each of 8 local ranks its share
    monkeypatch.setattr(compile_pool.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert compile_pool.processes() == 1  # never none by default
    monkeypatch.setenv(compile_pool.PROCESSES_ENV, "0")
    assert compile_pool.processes() == 0  # threads
    monkeypatch.setenv(compile_pool.PROCESSES_ENV, "6")
    assert compile_pool.processes() == 6
    monkeypatch.setenv(compile_pool.PROCESSES_ENV, "many")
    with pytest.raises(ValueError, match="FP4_COMPILE_PROCESSES"):
        compile_pool.processes()


def test_the_hook_takes_only_warm_ups_on_a_collecting_thread(monkeypatch, tmp_path):
    """A warm-up on the collecting thread goes to a worker (the JIT skips it here); a launch, another thread, or
    no collector at all compiles here as always."""
    monkeypatch.setattr(compile_pool, "STATS", type(compile_pool.STATS)())
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    executor = _Executor()
    monkeypatch.setattr(compile_pool, "_pool", lambda workers: executor)
    monkeypatch.setattr(compile_pool, "_PREVIOUS_HOOK", None)
    assert compile_pool._hook(**_hook_arguments()) is None  # nobody collecting
    collector = compile_pool.Collector(2)
    compile_pool._COLLECTING.active = collector
    try:
        assert compile_pool._hook(**_hook_arguments(warmup=False)) is None  # a launch is never skipped
        seen = []
        other = threading.Thread(target=lambda: seen.append(compile_pool._hook(**_hook_arguments())))
        other.start()
        other.join()
        assert seen == [None]  # another thread (Inductor's, the step's) compiles itself
        assert compile_pool._hook(**_hook_arguments()) is True
        (job,) = executor.jobs
        assert job == (__name__, __file__, "_kernel_function", '{"name": "k"}', str(tmp_path))  # the cache it uses
        # a hook call that does not say what to compile (another Triton's arguments): compiled here, counted
        assert compile_pool._hook(**_hook_arguments(data=None)) is None and compile_pool.STATS["unserialized"] == 1
        assert collector.wait() == 1 and collector.futures == []
        assert compile_pool.STATS == {"queued": 1, "compiled": 1, "unserialized": 1}
    finally:
        compile_pool._COLLECTING.active = None


def test_the_hook_keeps_a_previous_hook_and_never_raises(monkeypatch):
    monkeypatch.setattr(compile_pool, "STATS", type(compile_pool.STATS)())
    monkeypatch.setattr(compile_pool, "_PREVIOUS_HOOK", lambda **kwargs: "previous")
    assert compile_pool._hook(**_hook_arguments()) == "previous"
    monkeypatch.setattr(compile_pool, "_PREVIOUS_HOOK", None)

    def broken(workers):
        raise OSError("no processes here")

    monkeypatch.setattr(compile_pool, "_pool", broken)
    compile_pool._COLLECTING.active = compile_pool.Collector(2)
    try:
        assert compile_pool._hook(**_hook_arguments()) is None  # the kernel compiles here instead
    finally:
        compile_pool._COLLECTING.active = None


def test_a_failed_worker_compile_is_left_to_the_first_launch(monkeypatch):
    from concurrent.futures import Future

    monkeypatch.setattr(compile_pool, "STATS", type(compile_pool.STATS)())
    collector = compile_pool.Collector(2)
    failed, done = Future(), Future()
    failed.set_exception(RuntimeError("ptxas died"))
    done.set_result("k")
    collector.futures = [failed, done]
    assert collector.wait() == 1 and compile_pool.STATS == {"failed": 1, "compiled": 1}


def _kernel_module(tmp_path):
    path = tmp_path / "fake_kernel.py"
    path.write_text(
        "import pathlib\n"
        "class Compiled:\n"
        "    def _init_handles(self):\n"
        "        pathlib.Path(__file__).with_suffix('.launcher').write_text('built')\n"
        "class Function:\n"
        "    def preload(self, data):\n"
        "        import os\n"
        "        cache = os.environ.get('TRITON_CACHE_DIR', '-')\n"
        "        pathlib.Path(__file__).with_suffix('.preloaded').write_text(__name__ + ' ' + data + ' ' + cache)\n"
        "        return Compiled()\n"
        "kernel = Function()\n"
    )
    return path


def test_a_worker_process_replays_the_recorded_specialization(tmp_path):
    """The job goes to a real worker process, which imports the generated module under the parent's module name
    and calls ``preload`` with the recorded data (on a GPU: Triton compiles into its cache), then builds the
    compiled kernel's launcher; the same worker takes the next job, and a job that fails comes back as an error
    (that kernel then compiles at its first launch)."""
    path = _kernel_module(tmp_path)
    pool = compile_pool.WorkerPool(1)
    try:
        job = ("fp4_kernels.fake_0123", str(path), "kernel", "{}", str(tmp_path / "triton"))
        assert pool.submit(job).result(120) == "kernel"
        assert path.with_suffix(".preloaded").read_text() == f"fp4_kernels.fake_0123 {{}} {tmp_path / 'triton'}"
        assert path.with_suffix(".launcher").read_text() == "built"  # the launcher, too: the first launch loads it
        missing = pool.submit(("fp4_kernels.gone", str(tmp_path / "gone.py"), "kernel", "{}"))
        with pytest.raises(RuntimeError, match="gone"):
            missing.result(120)
        assert pool.submit(("fp4_kernels.fake_0123", str(path), "kernel", "[]", "")).result(120)
        assert path.with_suffix(".preloaded").read_text() == "fp4_kernels.fake_0123 [] -"  # the job's cache, always
        assert len(pool._children) == 1  # one worker served all three
    finally:
        pool.shutdown()
    assert all(child.poll() is not None for child in pool._children)


def test_compile_ahead_collects_for_processes_when_asked(monkeypatch):
    monkeypatch.setenv(compile_pool.PROCESSES_ENV, "3")
    monkeypatch.setattr(compile_pool, "available", lambda: True)
    monkeypatch.setattr(compile_pool, "_install", lambda: None)
    with autotune.compile_ahead() as ahead:
        assert isinstance(ahead.mode, compile_pool.Collector) and ahead.mode.workers == 3
        assert compile_pool._COLLECTING.active is ahead.mode and autotune.compiling_ahead()
    assert compile_pool._COLLECTING.active is None and not autotune.compiling_ahead()
    monkeypatch.setenv(compile_pool.PROCESSES_ENV, "0")
    with autotune.compile_ahead() as ahead:
        assert not isinstance(ahead.mode, compile_pool.Collector)


def test_the_hook_is_installed_once_and_keeps_the_one_before(monkeypatch):
    runtime = compile_pool._runtime_knobs()
    if runtime is None:
        pytest.skip("this Triton calls no JIT cache hook")
    assert compile_pool.available()
    previous = lambda **kwargs: None  # noqa: E731
    monkeypatch.setattr(runtime, "jit_cache_hook", previous)
    monkeypatch.setattr(compile_pool, "_INSTALLED", False)
    monkeypatch.setattr(compile_pool, "_PREVIOUS_HOOK", None)
    compile_pool._install()
    compile_pool._install()
    assert runtime.jit_cache_hook is compile_pool._hook and compile_pool._PREVIOUS_HOOK is previous


def test_workers_that_cannot_start_leave_the_compiles_on_threads(monkeypatch):
    def no_processes(workers):
        raise OSError("no processes here")

    monkeypatch.setattr(compile_pool, "available", lambda: True)
    monkeypatch.setattr(compile_pool, "_UNAVAILABLE", False)
    monkeypatch.setattr(compile_pool, "_pool", no_processes)
    monkeypatch.setenv(compile_pool.PROCESSES_ENV, "2")
    assert compile_pool.workers_in_use() == 2
    assert compile_pool.start() == 0  # logged, not raised: the compile goes on
    assert compile_pool.workers_in_use() == 0  # and its compiles ahead run on threads


def test_workers_start_before_the_first_job_and_serve_it(tmp_path, monkeypatch):
    """``start()`` starts the workers ``FP4_COMPILE_PROCESSES`` asks for when a graph reaches the backend, so
    their start-up is over before the warm-up's first job; the jobs then go to them (no worker is started for a
    job), and without the variable none starts."""
    monkeypatch.setattr(compile_pool, "available", lambda: True)
    monkeypatch.setattr(compile_pool, "_POOL", None)
    monkeypatch.setenv(compile_pool.PROCESSES_ENV, "0")
    assert compile_pool.start() == 0 and compile_pool._POOL is None
    monkeypatch.setenv(compile_pool.PROCESSES_ENV, "2")
    assert compile_pool.start() == 2
    pool = compile_pool._POOL
    try:
        assert len(pool._children) == 2 and all(child.poll() is None for child in pool._children)
        compile_pool.start()  # a second graph starts no more
        assert len(pool._children) == 2
        path = _kernel_module(tmp_path)
        jobs = [pool.submit(("fp4_kernels.fake_4567", str(path), "kernel", f"[{i}]", "")) for i in range(3)]
        assert [job.result(120) for job in jobs] == ["kernel"] * 3
        assert len(pool._children) == 2
    finally:
        pool.shutdown()
    assert all(child.poll() is not None for child in pool._children)
