"""The errors of reading a dataset: messages fit for an HTTP 400 (or a split's failure reason), naming the dataset
as shown to users and the cause; never a credential or a URL's query string."""

from __future__ import annotations


class DatasetError(ValueError):
    """The dataset itself is at fault: missing, refused, too large, malformed, of an unknown format."""


class DatasetUnavailableError(DatasetError):
    """The dataset's store cannot be reached or does not answer: the same read may work later (a 503, not a 400)."""
