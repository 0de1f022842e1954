"""revtune: what users import and run.

The ``revtune`` command line lives in `revtune.cli`. This package stays light: importing it pulls
in no JAX, no FastAPI and no Celery; ``revtune serve`` and ``revtune worker`` import the service
lazily.
"""

from revtune.client import Client

__all__ = ["Client"]
