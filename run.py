#!/usr/bin/env python3
"""The one entry point a fresh clone needs (standard library only).

    python3 run.py test [pytest args]   lint, unit tests and lit tests in ./.venv
    python3 run.py train [args]         run examples/train.py in ./.venv

The first run creates ``.venv`` and installs the project with its test
dependencies; later runs reuse it and reinstall only when pyproject.toml
changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".fp4-install-stamp"

MIN_TORCH = (2, 11)
# Pinning the exact release matters: where a CPU build of torch 2.13.0 is provided locally (the CI and
# development machines), `pip install torch==2.13.0` takes it, while an open range such as `torch>=2.11`
# makes pip fetch a newer multi-GB CUDA build from the index instead.
TORCH_PIN = "torch==2.13.0"
EXTRA_PACKAGES = ("matplotlib>=3.7",)


def say(message: str) -> None:
    print(f"[run.py] {message}", flush=True)


def call(command: list[str], **kwargs) -> int:
    return subprocess.call([str(part) for part in command], cwd=ROOT, env=environment(), **kwargs)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env.pop("PYTHONHOME", None)
    return env


def torch_version() -> tuple[int, ...] | None:
    probe = "import torch; print(torch.__version__.split('+')[0])"
    result = subprocess.run([str(PYTHON), "-c", probe], capture_output=True, text=True, env=environment())
    if result.returncode != 0:
        return None
    return tuple(int(part) for part in result.stdout.strip().split(".")[:2] if part.isdigit())


def install_stamp() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(repr((TORCH_PIN, EXTRA_PACKAGES, sys.version_info[:2])).encode())
    return digest.hexdigest()


def pip(*args: str) -> None:
    code = call([PYTHON, "-m", "pip", "install", "--disable-pip-version-check", *args])
    if code != 0:
        sys.exit(f"[run.py] pip install {' '.join(args)} failed with exit code {code}")


def ensure_venv() -> None:
    """Create .venv and install the project into it, unless that is already done."""
    if not PYTHON.exists():
        say(f"creating {VENV.relative_to(ROOT)}")
        code = subprocess.call([sys.executable, "-m", "venv", str(VENV)])
        if code != 0:
            sys.exit("[run.py] could not create the virtual environment")
    if STAMP.exists() and STAMP.read_text() == install_stamp() and torch_version():
        return
    version = torch_version()
    if version is None or version < MIN_TORCH:
        say(f"installing {TORCH_PIN}")
        pip(TORCH_PIN)
    say("installing fp4 (editable) with its test dependencies")
    pip("setuptools>=70.1")
    pip("--no-build-isolation", "-e", f"{ROOT}[test]", *EXTRA_PACKAGES)
    STAMP.write_text(install_stamp())


def junit_counts(path: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) from a JUnit XML report (pytest and lit both write one)."""
    if not path.exists():
        return 0, 0, 0
    passed = failed = skipped = 0
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcomes = {child.tag for child in case}
        if outcomes & {"failure", "error"}:
            failed += 1
        elif "skipped" in outcomes:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped


def test(pytest_args: list[str]) -> int:
    ensure_venv()
    results: list[tuple[str, bool, float]] = []
    counts = [0, 0, 0]
    with tempfile.TemporaryDirectory(prefix="fp4-test-") as scratch:
        pytest_xml, lit_xml = Path(scratch) / "pytest.xml", Path(scratch) / "lit.xml"
        steps = [
            ("ruff check", [BIN / "ruff", "check", "."], None),
            ("ruff format", [BIN / "ruff", "format", "--check", "."], None),
            ("pytest", [PYTHON, "-m", "pytest", f"--junitxml={pytest_xml}", *pytest_args], pytest_xml),
            ("lit", [BIN / "lit", "-v", f"--xunit-xml-output={lit_xml}", "tests/lit"], lit_xml),
        ]
        for name, command, report in steps:
            say(f"{name}: {' '.join(str(part) for part in command)}")
            start = time.monotonic()
            code = call(command)
            results.append((name, code == 0, time.monotonic() - start))
            if report is not None:
                for i, value in enumerate(junit_counts(report)):
                    counts[i] += value
    print()
    for name, ok, seconds in results:
        print(f"  {name:<12} {'ok' if ok else 'FAILED':<7} {seconds:7.1f}s")
    failed_steps = [name for name, ok, _ in results if not ok]
    passed, failed, skipped = counts
    if failed_steps and failed == 0:
        failed = len(failed_steps)  # a step failed without failing test cases (lint, collection, setup)
    print(f"summary: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed_steps else 0


def train(args: list[str]) -> int:
    ensure_venv()
    script = ROOT / "examples" / "train.py"
    if not script.exists():
        sys.exit(f"[run.py] {script.relative_to(ROOT)} does not exist yet")
    return call([PYTHON, script, *args])


def main(argv: list[str]) -> int:
    commands = {"test": test, "train": train}
    if not argv or argv[0] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
