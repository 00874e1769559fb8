"""Worker threads are still waited for after a Ctrl-C interrupted a wait (eternia_backup.threads).

On CPython 3.11, a Ctrl-C during Thread.join() marks the thread as ended while it runs on, so the
cleanup after the Ctrl-C (closing what the thread writes to) would not wait for it. A real SIGINT
lands in the main thread's wait here, then the second wait must still last until the thread ends.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from eternia_backup.threads import Worker


def test_a_wait_interrupted_by_ctrl_c_still_waits_for_the_worker_afterwards():
    release = threading.Event()
    ended = []
    worker = Worker(lambda: (release.wait(10), ended.append(True)), name="test-worker")
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        worker.join(timeout=10)  # (a timeout: were SIGINT ignored here, the test fails instead of hanging)
    assert worker.is_alive() and not ended  # it runs on, and says so
    threading.Timer(0.3, release.set).start()
    started = time.monotonic()
    assert worker.join(timeout=10) is True
    assert ended and time.monotonic() - started >= 0.25  # the second wait lasted until the end
    assert not worker.is_alive()


def test_join_with_a_timeout_says_whether_the_worker_ended():
    release = threading.Event()
    worker = Worker(release.wait, 10, name="test-worker")
    assert worker.join(timeout=0.05) is False and worker.is_alive()
    release.set()
    assert worker.join(timeout=5) is True
