"""The inference servers an agent drives, and what each can serve when nobody says otherwise.

Shared because two processes need it: the agent (``--server-kind``, its default ``--capabilities``) and the
controller (a Server's ``extraCapabilities`` add to the capabilities its pods' agents would otherwise have).
"""

from __future__ import annotations

SERVER_KINDS = ("mlserver", "triton")
DEFAULT_CAPABILITIES = {"mlserver": "sklearn,mlserver", "triton": "triton,python"}
