"""Autotuning over a small set of launch configurations, the choice cached per shape bucket.

A *bucket* rounds each size up to a power of two (``M=3000, N=4096, K=4096``
-> ``"4096x4096x4096"``), so a handful of timings serve every shape of a model.
The first launch in a bucket times every candidate (``triton.testing.do_bench``,
median) and keeps the fastest; the choice is remembered in memory and in the
kernel cache directory, next to the generated source it belongs to, so later
processes skip the timing.  Before timing, the candidates compile side by side
on a thread pool (Triton's asynchronous compile mode; much of a compile holds
the interpreter lock, so on an H100 16 threads ran a graph's compiles 2.4x faster
than one after another, not 16x); ``FP4_COMPILE_THREADS`` sets the pool size
(``1``: one after another), ``FP4_COMPILE_PROCESSES`` moves compiles ahead into
worker processes (:mod:`fp4.runtime.compile_pool`).  ``FP4_AUTOTUNE=0`` always takes the first (default)
candidate.  Candidates may be other implementations altogether (cuBLAS on the
folded operands): the runtime then runs whichever was faster for the bucket.

Choices travel between machines: ``fp4 tune export choices.json`` writes every
choice this machine's kernel cache holds, by target, kernel name and bucket, and
``FP4_AUTOTUNE_CHOICES=choices.json`` (several files joined by the path
separator) makes every process take them where its own cache has none, so a
fleet of identical GPUs (every node of a job) neither times nor compiles the
candidates a tuned machine already ruled out.  An imported choice is used only
where it is one of the kernel's candidates, so a table from an older version of
a kernel can cost speed, never correctness.

The package ships such tables for the cards it was tuned on (``fp4/runtime/choices/*.json``, exported
from a tuning run, see ``benchmarks/RESULTS.md``): they serve where neither this machine's cache nor
``FP4_AUTOTUNE_CHOICES`` has a choice, so a fresh machine of a tuned kind compiles only the chosen
configurations.  ``FP4_SHIPPED_CHOICES=0`` leaves them out (the autotuner then times every bucket itself).

Inside :class:`compile_ahead` nothing is timed or launched: a kernel whose
configuration is not chosen yet only queues the compiles of the candidates it
would time (the stored choice alone, where one is stored) on one thread pool
shared by every kernel of a graph (:mod:`fp4.runtime.warmup`), beside the rest
of the graph's compile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .cache import KernelCache, default_cache, triton_version

log = logging.getLogger("fp4.autotune")

AUTOTUNE_ENV = "FP4_AUTOTUNE"
COMPILE_THREADS_ENV = "FP4_COMPILE_THREADS"
CHOICES_ENV = "FP4_AUTOTUNE_CHOICES"
SHIPPED_CHOICES_ENV = "FP4_SHIPPED_CHOICES"
SHIPPED_CHOICES_DIR = Path(__file__).with_name("choices")
"""The choice tables shipped with the package (``fp4 tune export`` files), taken after every other source."""
CHOICES_FORMAT = 1
"""Version of the exported choices table (``fp4 tune export``)."""
BENCH_WARMUP_MS, BENCH_REP_MS = 10, 40
"""Timing per candidate: a short warm-up, then repetitions for 40 ms (the median is kept)."""

SECONDS: Counter = Counter()
"""Wall seconds spent getting kernels ready, by what (where a first step's time goes; never on the hot path):
``autotune.precompile`` compiling a bucket's candidates before timing them, ``autotune.timing`` timing them,
``plans.build`` a step building plans (their kernels compile later), ``kernels.first_launch`` each kernel's first
launch (Triton compiling the chosen configuration there, unless the autotuner or a warm-up compiled it before),
``warmup`` the compile-ahead threads, ``warmup.wait`` a step waiting for them (:mod:`fp4.runtime.warmup`)."""


@contextlib.contextmanager
def seconds_in(name: str):
    """``with seconds_in(name):`` adds the block's wall time to ``SECONDS[name]`` (also when it raises)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        SECONDS[name] += time.perf_counter() - started


@dataclass(frozen=True)
class Config:
    """One launch configuration: compile-time tile sizes plus warps and pipeline stages (or a named alternative)."""

    params: tuple = ()
    num_warps: int = 4
    num_stages: int = 3
    name: str = ""

    @classmethod
    def make(cls, num_warps: int = 4, num_stages: int = 3, name: str = "", **params) -> Config:
        return cls(tuple(sorted(params.items())), num_warps, num_stages, name)

    @property
    def kwargs(self) -> dict:
        return dict(self.params)

    def label(self) -> str:
        if not self.params:
            return self.name
        sizes = ",".join(f"{k}={v}" for k, v in self.params)
        text = f"{sizes},warps={self.num_warps},stages={self.num_stages}"
        return f"{self.name}:{text}" if self.name else text

    def to_json(self) -> dict:
        return {
            "params": dict(self.params),
            "num_warps": self.num_warps,
            "num_stages": self.num_stages,
            "name": self.name,
        }

    @classmethod
    def from_json(cls, data: dict) -> Config:
        return cls.make(data["num_warps"], data["num_stages"], data.get("name", ""), **data["params"])


def next_power_of_two(size: int) -> int:
    return 1 << max(int(size) - 1, 0).bit_length()


def bucket(*sizes: int) -> str:
    return "x".join(str(next_power_of_two(size)) for size in sizes)


def autotune_enabled() -> bool:
    return os.environ.get(AUTOTUNE_ENV, "1") not in ("0", "false", "no")


def compile_threads() -> int:
    value = os.environ.get(COMPILE_THREADS_ENV)
    return max(1, int(value)) if value else min(16, os.cpu_count() or 1)


_AHEAD = threading.local()


def compiling_ahead() -> bool:
    """Whether this thread is inside :class:`compile_ahead` (kernels queue compiles instead of running)."""
    return getattr(_AHEAD, "active", False)


class compile_ahead:
    """``with compile_ahead():`` every unchosen kernel met inside queues its candidates' compiles on one pool.

    Leaving the block waits for every compile (a failed one is logged and skipped: it fails again, visibly,
    when the autotuner times it).  Without Triton's asynchronous compile mode the compiles run one by one.
    ``FP4_COMPILE_PROCESSES=N`` compiles in ``N`` worker processes instead of threads
    (:mod:`fp4.runtime.compile_pool`).
    """

    def __init__(self, threads: int | None = None):
        self.threads = threads or compile_threads()

    def __enter__(self):
        from concurrent.futures import ThreadPoolExecutor

        from . import compile_pool

        self.pool = self.mode = None
        try:
            from triton.runtime._async_compile import AsyncCompileMode
        except ImportError:
            AsyncCompileMode = None
        workers = compile_pool.workers_in_use()
        if workers:  # worker processes (FP4_COMPILE_PROCESSES)
            self.mode = compile_pool.Collector(workers)
            self.mode.__enter__()
        elif AsyncCompileMode is not None and self.threads > 1:
            self.pool = ThreadPoolExecutor(self.threads)
            self.mode = AsyncCompileMode(self.pool, ignore_errors=True)
            self.mode.__enter__()
        _AHEAD.active = True
        return self

    def __exit__(self, *exc):
        _AHEAD.active = False
        try:
            if self.mode is not None:
                self.mode.__exit__(*exc)
        finally:
            if self.pool is not None:
                self.pool.shutdown()
        return False


def precompile(candidates: Sequence[Config], compile: Callable[[Config], object] | None) -> None:
    """Compile every candidate at once on a thread pool (no launch); failures surface when the candidate runs."""
    threads = compile_threads()
    if compile is None or threads == 1 or len(candidates) < 2:
        return
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:  # a Triton without asynchronous compiles: they happen one by one when timed
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(threads, len(candidates))) as pool, AsyncCompileMode(pool, ignore_errors=True):
        for config in candidates:
            try:
                compile(config)
            except Exception as error:  # the timing loop reports (and skips) a candidate that does not build
                log.info("precompile %s: %s", config.label(), error)


@dataclass
class Autotuner:
    """Picks a :class:`Config` per (kernel source, target, bucket) by timing the candidates once."""

    cache: KernelCache | None = None
    timings: dict = field(default_factory=dict)
    _chosen: dict = field(default_factory=dict)

    def choose(
        self,
        source,
        target: str,
        shape_bucket: str,
        candidates: Sequence[Config],
        run: Callable[[Config], object],
        compile: Callable[[Config], object] | None = None,
    ) -> Config | None:
        """The fastest of ``candidates`` for this bucket; ``run(config)`` launches once with it.

        ``compile(config)``, when given, builds a candidate without launching it (see :func:`precompile`).
        Inside :class:`compile_ahead` it only queues those compiles and returns None (nothing chosen yet).
        """
        key = (source.digest, str(target), shape_bucket)
        chosen = self._chosen.get(key)
        if chosen not in candidates:  # a choice is always one of this call's candidates
            if len(candidates) == 1 or not autotune_enabled():  # nothing to choose: this plan's own first
                chosen = candidates[0]
            else:
                chosen = self._known(source, target, shape_bucket, candidates)
                if chosen is not None:  # a stored or imported choice, remembered for the bucket (counted once)
                    self._chosen[key] = chosen
        if compiling_ahead():
            for config in [chosen] if chosen is not None else candidates:
                if compile is not None:
                    try:
                        compile(config)
                    except Exception as error:  # reported again when the candidate is timed
                        log.info("compile ahead %s %s: %s (%s)", source.name, shape_bucket, config.label(), error)
            return None
        if chosen is not None:
            return chosen
        import triton.testing

        with seconds_in("autotune.precompile"):
            precompile(candidates, compile)
        timings = {}
        with seconds_in("autotune.timing"):
            for config in candidates:
                try:
                    timings[config] = triton.testing.do_bench(
                        lambda config=config: run(config),
                        warmup=BENCH_WARMUP_MS,
                        rep=BENCH_REP_MS,
                        return_mode="median",
                    )
                except Exception as error:  # a config that does not compile or fit is skipped, not fatal
                    log.info("autotune %s %s: %s skipped (%s)", source.name, shape_bucket, config.label(), error)
        if not timings:
            raise RuntimeError(f"no launch configuration of {source.name} ran for shape bucket {shape_bucket}")
        config = min(timings, key=timings.get)
        self.timings[key] = {c.label(): t for c, t in timings.items()}
        log.info("autotune %s %s: %s (%.4f ms)", source.name, shape_bucket, config.label(), timings[config])
        (self.cache or default_cache()).write_choice(source, str(target), shape_bucket, config.to_json())
        self._chosen[key] = config
        return config

    def _known(self, source, target, shape_bucket, candidates) -> Config | None:
        """A choice made before: this machine's stored one, else an imported one, else a shipped one (None: time the
        candidates); each is taken only where it is one of ``candidates``."""
        stored = (self.cache or default_cache()).read_choices(source, str(target)).get(shape_bucket)
        imported, shipped = (
            table.get(str(target), {}).get(source.name, {}).get(shape_bucket) for table in imported_choices()
        )
        for choice, origin in ((stored, "stored"), (imported, "imported"), (shipped, "shipped")):
            if choice is not None:
                config = Config.from_json(choice)
                if config in candidates:
                    CHOICES[origin] += 1
                    return config
        return None


CHOICES: Counter = Counter()
"""Choices taken without timing, by origin: ``stored`` (this machine's cache), ``imported``
(``FP4_AUTOTUNE_CHOICES``) or ``shipped`` (the package's tables)."""


def export_choices(path, cache: KernelCache | None = None) -> int:
    """Write every choice stored in ``cache`` (default: this machine's) to ``path`` as one table; returns how
    many (target, kernel, bucket) choices it holds."""
    table: dict = {}
    for stored in (cache or default_cache()).stored_choices():
        table.setdefault(stored["target"], {}).setdefault(stored["kernel"], {}).update(stored["buckets"])
    return _write_choices(path, table, triton_version())


def merge_choices(path, sources) -> int:
    """Write the choices of the tables ``sources`` to ``path`` as one table, the first table that has a choice for a
    (target, kernel, bucket) winning (as when they are read); returns how many choices it holds.  ``path`` may be
    one of the sources: how a tuning run's new choices join a shipped table without replacing any."""
    table = _read_imported(sources, "fp4 tune merge")
    with open(sources[0]) as stream:
        triton = json.load(stream).get("triton", "")
    return _write_choices(path, table, triton)


def _write_choices(path, table: dict, triton: str) -> int:
    """Write a ``{target: {kernel name: {bucket: config}}}`` table as a choices file; returns how many it holds."""
    with open(path, "w") as stream:
        json.dump({"choices": table, "format": CHOICES_FORMAT, "triton": triton}, stream, indent=1, sort_keys=True)
        stream.write("\n")
    return sum(len(buckets) for kernels in table.values() for buckets in kernels.values())


_IMPORTED: dict = {}


def imported_choices() -> tuple[dict, dict]:
    """Two ``{target: {kernel name: {bucket: config}}}`` tables: the files ``FP4_AUTOTUNE_CHOICES`` names, and
    the package's shipped tables (none with ``FP4_SHIPPED_CHOICES=0``); in each the first file that has a choice
    wins.  Read once per value of the two variables."""
    value = os.environ.get(CHOICES_ENV, "")
    shipped = os.environ.get(SHIPPED_CHOICES_ENV, "1") != "0"
    if (value, shipped) not in _IMPORTED:
        files = sorted(SHIPPED_CHOICES_DIR.glob("*.json")) if shipped else []
        _IMPORTED[value, shipped] = (
            _read_imported(value.split(os.pathsep), CHOICES_ENV),
            _read_imported(files, "a shipped choices table"),
        )
    return _IMPORTED[value, shipped]


def _read_imported(paths, source: str) -> dict:
    merged: dict = {}
    for path in filter(None, paths):
        try:
            with open(path) as stream:
                document = json.load(stream)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{source}: cannot read {path}: {error}") from error
        if not isinstance(document, dict) or document.get("format") != CHOICES_FORMAT:
            raise ValueError(f"{source}: {path} is not an fp4 choices table (format {CHOICES_FORMAT})")
        for target, kernels in document["choices"].items():
            for kernel, buckets in kernels.items():
                known = merged.setdefault(target, {}).setdefault(kernel, {})
                for bucket, config in buckets.items():
                    known.setdefault(bucket, config)
    return merged


AUTOTUNER = Autotuner()
