"""lit configuration for the pass tests: ``.fx`` graphs run through ``fp4-opt`` and checked with ``filecheck``.

Substitutions, so the tests run from a checkout without console scripts on PATH:

* ``fp4-opt``   -> ``<this python> -m fp4.opt``
* ``filecheck`` -> the ``filecheck`` (PyPI) next to this python, else the one on PATH
* ``%python``   -> this python

Run with ``lit tests/lit`` (``-v`` shows failures in full).
"""

import os
import shutil
import sys

import lit.formats

config.name = "fp4"  # noqa: F821  (lit provides `config`)
config.test_format = lit.formats.ShTest(execute_external=False)  # noqa: F821
config.suffixes = [".fx", ".py"]  # noqa: F821
config.excludes = ["lit.cfg.py", "Output"]  # noqa: F821
config.test_source_root = os.path.dirname(__file__)  # noqa: F821

python = sys.executable
filecheck = os.path.join(os.path.dirname(python), "filecheck")
if not os.path.exists(filecheck):
    filecheck = shutil.which("filecheck")
if filecheck is None:
    lit_config.fatal("filecheck not found: pip install filecheck")  # noqa: F821


def _command(name):
    # A whole word only: never rewrite a path (e.g. %s) that happens to contain the name.
    return r"(?<![\w./-])" + name + r"(?![\w./-])"


config.substitutions.append(("%python", f'"{python}"'))  # noqa: F821
config.substitutions.append((_command("fp4-opt"), f'"{python}" -m fp4.opt'))  # noqa: F821
config.substitutions.append((_command("filecheck"), f'"{filecheck}"'))  # noqa: F821

# fp4 must be importable by this python (an editable install, as run.py makes).
for variable in ("HOME", "TMPDIR", "PYTHONPATH", "TRITON_INTERPRET", "TORCHINDUCTOR_CACHE_DIR"):
    if variable in os.environ:
        config.environment[variable] = os.environ[variable]  # noqa: F821
