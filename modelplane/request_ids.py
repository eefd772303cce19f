"""Which id a caller may give its inference request (``x-request-id``): the rule the gateway and the agent's proxy
share, so that an id goes on log lines, and on to the replica, only in a form every process carries as sent."""

from __future__ import annotations

import re
from typing import Final

# A request's id (a V2 request's "id", a Kafka record's x-request-id or key) is at most this long.
MAX_REQUEST_ID_CHARS: Final = 256
# Visible ASCII: what an HTTP header (to the replica and back to the caller) and a log line carry as sent.
_USABLE: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")


def is_usable_request_id(text: str) -> bool:
    return _USABLE.fullmatch(text) is not None
