import gc

import pytest

from simulations.common import no_cycle_collector


def test_no_cycle_collector_turns_it_off_and_back_on_even_on_error() -> None:
    assert gc.isenabled()
    with no_cycle_collector():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), no_cycle_collector():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_no_cycle_collector_leaves_it_off_if_it_was_off() -> None:
    gc.disable()
    try:
        with no_cycle_collector():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
