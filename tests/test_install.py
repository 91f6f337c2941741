"""Packaging: the non-editable wheel installs into a fresh venv and works from outside the repository."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fp4", "fp4.passes", "fp4.codegen", "fp4.runtime")

pytestmark = pytest.mark.slow


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, venv site-packages, a work directory outside the repository)."""
    root = tmp_path_factory.mktemp("install")
    # Build from a copy so that build/ and *.egg-info never land in the checkout.
    source = root / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "Output", "fp4-dump"
        ),
    )
    wheels = root / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)])
    (wheel,) = wheels.glob("fp4-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    python = venv / "bin" / "python"
    venv_site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    # torch and the other dependencies come from the environment running the tests (--no-deps);
    # a plain path entry does not run that environment's .pth files, so its editable fp4 stays invisible.
    dependency_dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    (venv_site / "test_dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(dependency_dirs)))
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)])
    work = root / "elsewhere"
    work.mkdir()
    return python, venv_site, work


def test_packages_import_from_the_installed_wheel(installed):
    python, venv_site, work = installed
    script = textwrap.dedent(
        f"""
        import importlib
        for name in {PACKAGES!r}:
            module = importlib.import_module(name)
            print(name, module.__file__)
        import torch
        assert hasattr(torch.ops.fp4, "mxfp4_gemm")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = run([str(python), "-c", script], cwd=work, env=env)
    locations = dict(line.split(" ", 1) for line in out.splitlines())
    assert set(locations) == set(PACKAGES)
    for name, location in locations.items():
        path = Path(location).resolve()
        assert path.is_relative_to(venv_site.resolve()), f"{name} imported from {path}, not the venv"
        assert not path.is_relative_to(REPO), f"{name} imported from the repository"


def test_entry_points_and_console_scripts(installed):
    python, venv_site, work = installed
    (dist_info,) = venv_site.glob("fp4-*.dist-info")
    script = textwrap.dedent(
        f"""
        from importlib.metadata import Distribution
        dist = Distribution.at({str(dist_info)!r})
        for ep in dist.entry_points:
            print(ep.group, ep.name, ep.value)
        """
    )
    entry_points = set(run([str(python), "-c", script], cwd=work).splitlines())
    assert "torch_dynamo_backends fp4 fp4.backend:fp4_backend" in entry_points
    assert "console_scripts fp4-opt fp4.opt:main" in entry_points
    assert "console_scripts fp4 fp4.cli:main" in entry_points
    bin_dir = python.parent
    assert (bin_dir / "fp4").exists() and (bin_dir / "fp4-opt").exists()
    listing = run([str(bin_dir / "fp4-opt"), "--list-passes"], cwd=work)
    assert any(line.startswith("dce ") for line in listing.splitlines())
