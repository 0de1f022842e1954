"""Numba's on-disk cache for the fused CPU kernels, keyed by all of their sources at once.

Numba keys each cached function by the contents of its own source file only. The step handlers in
`hypercore._fused_launch` are compiled with the loops of `hypercore._fused_kernels` and
`_fused_kernels_adam` in them, and every loop with the constants of `hypercore._fixed`, `adam` and
`budget` frozen in: after an edit to a loop alone, the handlers kept running the loop as it was from
the cache, and the tests, which go through the handlers, tested the old loop (it happened here: a
kernel change measured no faster through XLA until the cache was cleared). The locators below serve
exactly those modules' functions, in the same places Numba would put them (``NUMBA_CACHE_DIR``, the
package's ``__pycache__``, the user-wide cache), and stamp each with one digest of all the files
`SOURCES` names, so any change to any of them recompiles every kernel.

`install` must run before the first of those modules decorates a function (`_fused_kernels` calls it
first thing). ``NUMBA_CACHE_LOCATOR_CLASSES``, which replaces Numba's list of locators, bypasses it.
"""

from __future__ import annotations

import functools
import hashlib
import os

from numba.core import caching

SOURCES = (
    "_fused_kernels.py",
    "_fused_kernels_adam.py",
    "_fused_launch.py",
    "_fixed.py",
    "adam.py",
    "budget.py",
)
_HERE = os.path.dirname(os.path.abspath(__file__))
_PATHS = tuple(os.path.join(_HERE, name) for name in SOURCES)
_KERNEL_MODULES = frozenset(_PATHS[:3])


def _stamps() -> tuple:
    return tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in _PATHS)


@functools.lru_cache(maxsize=4)
def _digest(stamps: tuple) -> bytes:  # re-read whenever a file's time or size changes
    h = hashlib.sha256()
    for path in _PATHS:
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.digest()


def sources_digest() -> bytes:
    """One SHA-256 over the contents of every file in `SOURCES`."""
    return _digest(_stamps())


class _AllSources:
    """Mixin: only the kernel modules' functions, stamped with `sources_digest`."""

    def get_source_stamp(self):
        return sources_digest()

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.abspath(py_file) not in _KERNEL_MODULES:
            return None
        return super().from_function(py_func, py_file)


def _numba(name: str):
    return getattr(caching, name, None) or getattr(caching, f"_{name}")  # public since Numba 0.61


LOCATORS = tuple(
    type(f"Kernels{name}", (_AllSources, _numba(name)), {})
    for name in ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")
)


def install() -> None:
    """Put the kernels' locators ahead of Numba's own (once per process)."""
    classes = _numba("CacheImpl")._locator_classes
    for locator in reversed(LOCATORS):
        if locator not in classes:
            classes.insert(0, locator)
