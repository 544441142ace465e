"""SciPy modules imported on first use.

``import scipy.stats`` takes about a second (several on a loaded machine), and every
``easeml`` process that reads a ``.easeml.yml`` imports the estimator: the worker's
``inspect`` only validates the configuration (the plan is made on the master), so it should
not pay for SciPy. ``stats.binom.logsf(...)`` through :data:`stats` is SciPy's own function,
looked up when first called.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """A stand-in for module ``name`` that imports it on the first attribute access."""

    def __init__(self, name: str) -> None:
        self._lazy_name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_lazy_"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._lazy_name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name!r}>"


stats = LazyModule("scipy.stats")
special = LazyModule("scipy.special")
optimize = LazyModule("scipy.optimize")
