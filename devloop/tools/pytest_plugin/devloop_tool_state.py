"""Loaded into the project's pytest by DevLoop (`-p devloop_tool_state`): no tool state
in the project tree.

Runs in the project's interpreter (any Python 3), with nothing but the standard
library and what the project has installed. hypothesis keeps its example
database under the project's working directory (`.hypothesis/`) unless told
otherwise; versions before the HYPOTHESIS_STORAGE_DIRECTORY variable are told
through `set_hypothesis_home_dir`, here, before any test module is imported.
pytest-benchmark's default storage (`./.benchmarks`) moves to the cache too.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

_CACHE = os.environ.get("DEVLOOP_CACHE_DIR", "")

if _CACHE and importlib.util.find_spec("hypothesis") is not None:
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(os.path.join(_CACHE, "hypothesis"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    storage = getattr(config.option, "benchmark_storage", None)
    if _CACHE and storage in ("file://./.benchmarks", "./.benchmarks"):
        config.option.benchmark_storage = "file://" + os.path.join(_CACHE, "benchmarks")
