"""The on-disk kernel cache: generated sources keyed by their content, the target and the Triton version.

``KernelCache.load(source, target)`` writes the generated module once under
``<cache dir>/<key[:2]>/<kernel name>-<key[:16]>.py`` (atomically) and imports
it; Triton's JIT then compiles and caches the binaries itself, keyed by the
same text.  The key is ``sha256(source text, target, Triton version, generator
version)``, so a new Triton, a new target or a changed generator never reuses a
stale file.  ``compile_ahead_of_time`` compiles a source for any CUDA
architecture without a GPU (``triton.compile`` with a ``GPUTarget``), which is
how CI checks the PTX of every variant.

The cache directory is ``$FP4_CACHE_DIR`` or ``~/.cache/fp4``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from fp4.codegen.source import GENERATOR_VERSION, KernelSource

CACHE_DIR_ENV = "FP4_CACHE_DIR"


def triton_version() -> str:
    import triton

    return triton.__version__


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "fp4")


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (another process too) sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    with os.fdopen(handle, "wb" if isinstance(data, bytes) else "w") as stream:
        stream.write(data)
    os.replace(temporary, path)


class KernelCache:
    """Generated kernel modules on disk plus the JIT functions loaded from them (one per key and mode)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self._loaded: dict[tuple[str, bool], object] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(source: KernelSource, target: str) -> str:
        text = "\0".join((source.digest, str(target), triton_version(), GENERATOR_VERSION))
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, source: KernelSource, target: str) -> Path:
        key = self.key(source, target)
        return self.directory / key[:2] / f"{source.name}-{key[:16]}.py"

    def load(self, source: KernelSource, target: str, interpret: bool = False):
        """The ``@triton.jit`` function of ``source`` (``interpret``: Triton's CPU interpreter)."""
        key = self.key(source, target)
        with self._lock:
            cached = self._loaded.get((key, interpret))
            if cached is not None:
                return cached
            path = self.path(source, target)
            if not path.exists() or path.read_text() != source.text:
                write_atomically(path, source.text)
            function = _import_kernel(path, source.name, f"fp4_kernels.{source.name}_{key[:16]}", interpret)
            self._loaded[(key, interpret)] = function
            return function

    # -- autotuning choices -------------------------------------------------------------------------------

    CHOICES_SUFFIX = ".autotune.json"

    def _choices_path(self, source: KernelSource, target: str) -> Path:
        return self.path(source, target).with_suffix(self.CHOICES_SUFFIX)

    def read_choices(self, source: KernelSource, target: str) -> dict:
        """``{bucket: config}`` stored for ``source`` on ``target``."""
        return _read_choices_file(self._choices_path(source, target)).get("buckets", {})

    def write_choice(self, source: KernelSource, target: str, bucket: str, choice: dict) -> None:
        with self._lock:
            choices = self.read_choices(source, target)
            choices[bucket] = choice
            stored = {"kernel": source.name, "target": str(target), "triton": triton_version(), "buckets": choices}
            write_atomically(self._choices_path(source, target), json.dumps(stored, indent=1, sort_keys=True))

    def stored_choices(self) -> list[dict]:
        """Every choices file under the cache directory: ``{"kernel", "target", "triton", "buckets"}`` each
        (files from before the kernel name and target were stored in them are skipped)."""
        found = []
        for path in sorted(self.directory.glob(f"*/*{self.CHOICES_SUFFIX}")):
            stored = _read_choices_file(path)
            if {"kernel", "target", "buckets"} <= stored.keys():
                found.append(stored)
        return found


def _read_choices_file(path: Path) -> dict:
    try:
        stored = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    if not isinstance(stored, dict):
        return {}
    return stored if "buckets" in stored else {"buckets": stored}  # the earlier format: buckets only


def _import_kernel(path: Path, function_name: str, module_name: str, interpret: bool):
    """Import the generated module at ``path``; ``@triton.jit`` picks the interpreter from the environment."""
    module_name += "_interpreted" if interpret else ""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # Triton's JIT looks the module up to read the source
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return getattr(module, function_name)


_DEFAULT: KernelCache | None = None


def default_cache() -> KernelCache:
    global _DEFAULT
    if _DEFAULT is None or _DEFAULT.directory != default_cache_dir():
        _DEFAULT = KernelCache()
    return _DEFAULT


def compile_ahead_of_time(
    source: KernelSource,
    arch: int,
    constexprs: dict,
    num_warps: int = 4,
    num_stages: int = 3,
    cache: KernelCache | None = None,
    aligned: tuple[str, ...] = (),
):
    """Compile ``source`` for ``sm_<arch>`` without a GPU; returns Triton's compiled kernel (``.asm['ptx']``).

    Pointers are taken as 16-byte aligned, and so are the integer arguments named in ``aligned``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cache = cache or default_cache()
    function = cache.load(source, f"sm_{arch}")
    signature = dict(source.signature)
    for name, block in source.descriptor_blocks.items():
        shape = ", ".join(str(constexprs[dim]) for dim in block)
        signature[name] = signature[name].replace(">", f"[{shape}]>")
    signature.update({name: "constexpr" for name in constexprs})
    # What Triton's JIT would specialize for aligned tensors and sizes that are multiples of 16.
    pointer_alignment = {
        (function.arg_names.index(name),): [["tt.divisibility", 16]]
        for name, kind in source.signature.items()
        if kind.startswith("*") or name in aligned
    }
    ast = ASTSource(fn=function, signature=signature, constexprs=dict(constexprs), attrs=pointer_alignment)
    options = dict(source.options, num_warps=num_warps, num_stages=num_stages)
    return triton.compile(ast, target=GPUTarget("cuda", arch, 32), options=options)
