"""The one reconnect loop (relay, event consumer, daemon): capped doubling backoff."""

import threading

import pytest

from vmbackend.protocol.backoff import Backoff, run_with_reconnect


class Down(Exception):
    pass


def test_the_delay_doubles_up_to_the_cap_and_resets():
    backoff = Backoff(start=0.5, cap=3.0)

    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def _loop(session, *, reraise=False, stop=None):
    stop = stop or threading.Event()
    errors = []
    run_with_reconnect(
        session,
        stop=stop,
        errors=(Down,),
        on_error=lambda exc, delay: errors.append((type(exc).__name__, delay)),
        backoff=Backoff(start=0.001, cap=0.004),
        reraise=reraise,
    )
    return errors


def test_it_retries_with_growing_delays_until_the_session_is_done():
    attempts = []

    def session(connected):
        attempts.append(1)
        if len(attempts) < 5:
            raise Down
        return True

    assert _loop(session) == [("Down", 0.001), ("Down", 0.002), ("Down", 0.004), ("Down", 0.004)]
    assert len(attempts) == 5


def test_a_session_that_connected_resets_the_delay():
    attempts = []

    def session(connected):
        attempts.append(1)
        if len(attempts) in (2, 3):
            connected()  # up, then lost again: the next wait starts small
        if len(attempts) < 4:
            raise Down
        return True

    assert [delay for _, delay in _loop(session)] == [0.001, 0.001, 0.001]


def test_stop_ends_the_loop_and_wakes_the_wait():
    stop = threading.Event()

    def session(connected):
        stop.set()  # e.g. SIGTERM while the broker is down
        raise Down

    backoff = Backoff(start=3600, cap=3600)
    run_with_reconnect(
        session, stop=stop, errors=(Down,), on_error=lambda e, d: None, backoff=backoff
    )  # returns at once: the one-hour wait is woken by stop


def test_a_session_that_returns_without_being_done_runs_again_until_stopped():
    stop = threading.Event()
    runs = []

    def session(connected):
        runs.append(1)
        if len(runs) == 3:
            stop.set()
        return False

    assert _loop(session, stop=stop) == []
    assert len(runs) == 3


def test_with_reraise_the_first_error_propagates_after_the_hook():
    def session(connected):
        raise Down

    errors = []
    with pytest.raises(Down):
        run_with_reconnect(
            session,
            stop=threading.Event(),
            errors=(Down,),
            on_error=lambda exc, delay: errors.append(delay),
            reraise=True,
        )
    assert errors == [0.5]


def test_an_unexpected_error_is_not_retried():
    def session(connected):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        _loop(session)
