"""The one error type of the artifacts package."""

from __future__ import annotations


class ArtifactError(Exception):
    """Fetching a model's artifacts failed; the message says what failed and why.

    The agent reports the message as the LOAD_FAILED reason, so it never holds a secret: credentials,
    the text of a storage config, or the query string of a URL.
    """
