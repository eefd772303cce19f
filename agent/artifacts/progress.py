"""Progress of one artifact download, logged at info while it runs long: what an operator watching a slow load
sees instead of silence.

A line at most every PROGRESS_EVERY_SECONDS: the source (the redacted URI, never credentials), bytes so far and the
total when known (Content-Length, an S3 listing's sizes), files done of files for an S3 prefix; then one line with
the size and the time taken, only for a download that logged progress. A download done before the first interval
says nothing. The model comes from the log context (the agent binds it around a load; asyncio.to_thread, which
in_thread uses, copies the context into the download's thread). Per chunk the cost is one monotonic clock read and
a comparison: nothing is formatted unless a line is written.
"""

from __future__ import annotations

import logging
import time

from modelplane.logs import with_fields

log = logging.getLogger(__name__)

# Often enough that a load of several GB is visibly moving, rarely enough that it adds a handful of lines.
PROGRESS_EVERY_SECONDS = 10.0
_MIB = float(1 << 20)


class DownloadProgress:
    """Counts one download's bytes (and files) and logs them when ``every_seconds`` have passed since the last line.

    ``every_seconds`` 0 logs at every chunk but the one that completes a download of known size (for tests).
    """

    __slots__ = ("_every", "_files", "_logged", "_next", "_source", "_started", "_total", "done_bytes", "done_files")

    def __init__(self, source: str, total_bytes: int | None, files: int | None = None, *, every_seconds: float) -> None:
        self._source = source
        self._total = total_bytes
        self._files = files
        self._every = every_seconds
        self._started = time.monotonic()
        self._next = self._started + every_seconds
        self._logged = False
        self.done_bytes = 0
        self.done_files = 0

    def add(self, count: int) -> None:
        """``count`` more bytes arrived."""
        self.done_bytes += count
        if time.monotonic() >= self._next and self.done_bytes != self._total:
            self._report()

    def file_done(self) -> None:
        self.done_files += 1

    def finish(self) -> None:
        """The download is complete: one line with its size and time, if it logged progress."""
        if not self._logged:
            return
        seconds = time.monotonic() - self._started
        files = f", {self.done_files} files" if self._files is not None else ""
        log.info(
            "downloaded the model's artifacts: %.1f MiB%s in %.1fs",
            self.done_bytes / _MIB,
            files,
            seconds,
            extra=with_fields(
                source=self._source,
                bytes=self.done_bytes,
                **({"files": self.done_files} if self._files is not None else {}),
                seconds=round(seconds, 3),
            ),
        )

    def _report(self) -> None:
        self._logged = True
        self._next = time.monotonic() + self._every
        fields: dict[str, object] = {"source": self._source, "bytes": self.done_bytes}
        of_total = ""
        if self._total is not None:
            fields["total_bytes"] = self._total
            of_total = f" of {self._total / _MIB:.1f} MiB ({100 * self.done_bytes // max(self._total, 1)}%)"
        files = ""
        if self._files is not None:
            fields |= {"files_done": self.done_files, "files": self._files}
            files = f", {self.done_files} of {self._files} files"
        log.info(
            "downloading the model's artifacts: %.1f MiB%s%s",
            self.done_bytes / _MIB,
            of_total,
            files,
            extra=with_fields(**fields),
        )
