"""The revtune REST API (FastAPI). `create_app` builds it; see DESIGN.md's REST contract and docs/API.md.

Importing this package imports no engine: JAX lives only in the worker processes.
"""

from api.app import create_app

__all__ = ["create_app"]
