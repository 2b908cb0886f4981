"""How long the worker gathers a batch or a publisher round (processors/windows.py)."""

from processors.windows import BUSY_S, QUIET_S, next_window


def test_a_quiet_stream_keeps_the_short_window_for_latency() -> None:
    assert next_window(0) == next_window(1) == next_window(25) == QUIET_S == 0.1


def test_a_busy_stream_waits_longer_in_proportion_up_to_the_cap() -> None:
    assert next_window(50) == 0.2
    assert next_window(75) == next_window(10_000) == BUSY_S == 0.3
