"""Stop signals of the long-running commands: SIGTERM and SIGINT set an event, and the
loops finish the batch in flight, flush, commit and leave their group."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger("streamscore")


def install_stop_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %s: finishing the batch in flight, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
