"""What the ``revtune`` CLI's command groups share, kept apart so that they never import `revtune.cli`.

`revtune.cli` imports the command groups; the groups import from here.
"""

from __future__ import annotations


class CommandError(Exception):
    """A mistake the user can fix (bad option, missing key): printed as ``revtune: error: ...``."""
