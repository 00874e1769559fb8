"""WriteBehind: the create's compressing side runs in a thread; what the writer sees must not change."""

import threading

import pytest

from eternia_backup.writebehind import WriteBehind


class Sink:
    def __init__(self, fail_at=None, gate=None):
        self.parts, self.fail_at, self.gate = [], fail_at, gate
        self.threads = set()

    def write(self, data):
        if self.gate is not None:
            self.gate.wait()
        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and len(self.parts) == self.fail_at:
            raise OSError(28, "No space left on device")
        self.parts.append(data)
        return len(data)


def test_writes_arrive_in_order_in_another_thread():
    sink = Sink()
    w = WriteBehind(sink, depth=2)
    chunks = [bytes([i]) * (i + 1) for i in range(200)]
    for c in chunks:
        assert w.write(c) == len(c)
    w.close()
    assert sink.parts == chunks
    assert sink.threads == {"eternia-write-behind"}


def test_an_error_of_the_inner_write_is_raised_to_the_writer_and_the_rest_dropped():
    sink = Sink(fail_at=3)
    w = WriteBehind(sink, depth=1)
    with pytest.raises(OSError, match="No space left"):
        for i in range(1000):
            w.write(b"x%d" % i)
        w.close()
    with pytest.raises(OSError, match="No space left"):
        w.close()
    assert len(sink.parts) == 3


def test_abort_drops_what_waits_and_returns_when_the_thread_is_done():
    gate = threading.Event()
    sink = Sink(gate=gate)
    w = WriteBehind(sink, depth=4)
    for i in range(4):
        w.write(b"%d" % i)
    threading.Timer(0.2, gate.set).start()
    w.abort()  # waits for the write in progress, writes nothing more
    n = len(sink.parts)
    assert n <= 1
    gate.set()
    assert len(sink.parts) == n
    w.abort()  # twice is harmless
