"""One router per resource, all under ``/v1`` (health, readiness and metrics at the root)."""
