"""The one error a Server's builders raise: the resources describe no pod modelplane can run."""

from __future__ import annotations


class ServerSpecError(ValueError):
    """A Server (or its ServerConfig) that cannot become a StatefulSet; the message says which field and why, so
    it can go into the Server's Ready condition as it is."""
