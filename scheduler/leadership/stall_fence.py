"""A last fence against two leaders: a thread that ends the process when it still runs well after its Lease could
no longer be renewed.

The elector steps down on the event loop at its renew deadline, and the process then stops serving and exits. If
the event loop is stalled (a long synchronous step, a paused VM), neither happens, while a standby may take over
once the Lease expires. This thread does not need the event loop: past the renew deadline by ``margin`` (half of
``lease duration - renew deadline``, so before the Lease can expire anywhere), it exits the process at once,
without cleanup: everything acknowledged is in the state store already, and Kubernetes starts the replica again as
a standby.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

EXIT_LEADERSHIP_LOST = 1


class StallFence:
    def __init__(self, acting_deadline: Callable[[], float | None], margin_seconds: float) -> None:
        self._acting_deadline = acting_deadline
        self._margin = margin_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="leadership-stall-fence", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _watch(self) -> None:
        period = max(0.01, min(0.25, self._margin / 4))
        while not self._stopped.wait(period):
            deadline = self._acting_deadline()
            if deadline is not None and time.monotonic() > deadline + self._margin:
                message = (
                    "the scheduler is past its lease's renew deadline and still running (its event loop stalled, or "
                    "stopping took too long): exiting at once, so that it never acts beside a new leader\n"
                )
                sys.stderr.write(message)
                sys.stderr.flush()
                os._exit(EXIT_LEADERSHIP_LOST)
