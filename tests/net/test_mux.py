"""Several cores behind one Mux, stepped by hand."""

import pytest

from hexamesh.net.mux import Mux
from hexamesh.wire import Envelope
from tests.helpers import Blob, Kitchen, RecordingCore, Stepped

A = ("10.0.0.1", 7420)


def test_routes_by_type_and_concatenates_outboxes_and_events() -> None:
    blobs, tags = RecordingCore(), RecordingCore()
    mux = Mux()
    mux.add(blobs, Blob)
    mux.add(tags, Kitchen)
    with pytest.raises(ValueError, match="routed to another core"):
        mux.add(tags, Blob)
    mux.receive(Envelope(sender=b"a" * 20, msg_id=1, message=Blob(data=b"x")), A, 1.0)
    assert len(blobs.received) == 1 and tags.received == []
    tags.emit("from tags")
    blobs.send(A, Envelope(sender=b"a" * 20, msg_id=2, message=Blob(data=b"y")))
    assert mux.events() == [Stepped("receive", 1.0), "from tags"]
    assert mux.events() == []
    assert [env.msg_id for _, env in mux.outbox()] == [2]


def test_a_failing_timer_is_kept_for_the_driver_and_the_others_run() -> None:
    class Broken(RecordingCore):
        def handle_timer(self, now: float) -> None:
            raise RuntimeError("bug")

    broken, fine = Broken(), RecordingCore()
    broken.wake_at = fine.wake_at = 1.0
    mux = Mux()
    mux.add(broken, Blob)
    mux.add(fine, Kitchen)
    assert mux.next_timer() == 1.0
    mux.handle_timer(1.0)
    assert fine.timers == [1.0]
    [(error, what, kind)] = mux.take_errors()
    assert str(error) == "bug" and "Broken" in what and kind is Blob
