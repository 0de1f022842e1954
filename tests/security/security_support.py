"""Helpers for the input and security tests: tests/api's fixtures and helpers, reused, not copied.

tests/api has no ``__init__.py`` (its modules import each other by plain name), so its folder goes
on ``sys.path`` and its conftest is loaded once under a name of its own.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np

API_TESTS = Path(__file__).resolve().parent.parent / "api"
if str(API_TESTS) not in sys.path:
    sys.path.append(str(API_TESTS))


def _load_api_conftest():
    name = "revtune_tests_api_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, API_TESTS / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_api = _load_api_conftest()
Service = _api.Service
make_settings = _api.make_settings
fast_argon2 = _api.fast_argon2
service = _api.service


def spec_with(path: str, value, spec: dict | None = None) -> dict:
    """A deep copy of ``spec`` (default: the tiny spec) with the dotted ``path`` set to ``value``."""
    from api_support import TINY_SPEC

    spec = copy.deepcopy(spec or TINY_SPEC)
    *parents, last = path.split(".")
    node = spec
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return spec


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload(client, data: bytes, name: str = "mine", filename: str = "data.npz"):
    return client.post(
        "/v1/datasets", files={"file": (filename, data, "application/octet-stream")}, data={"name": name}
    )


def post_raw(client, path: str, body: bytes | str, content_type: str | None = "application/json", **headers):
    """POST bytes exactly as given (no client-side JSON encoding)."""
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.post(path, content=body, headers=headers)
