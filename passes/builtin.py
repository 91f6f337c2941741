"""Imports every pass module so that its passes register themselves.

Add new pass modules here.
"""

from . import dce  # noqa: F401
