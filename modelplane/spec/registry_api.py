"""What the registry's REST API and its clients (the ``modelplane registry`` client commands) agree on, kept light
(no SQLAlchemy, no aiohttp) so a client imports it without the registry's store."""

from __future__ import annotations

from typing import Final

# Seed 002's TOTAL_COUNT: on a list's answer, how many match in all, whatever ``offset`` and ``limit`` were.
TOTAL_COUNT_HEADER: Final = "X-Total-Count"
