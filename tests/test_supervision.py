"""The supervision policy with plain numbers: restart or fail (restart intensity within a
window), the backoff before a restart, and the validation of ServiceOptions."""

from __future__ import annotations

import pytest

from freshproc import ServiceOptions
from freshproc._supervision import BACKOFF_BASE, Ending, RestartHistory, decide, restart_delay


@pytest.mark.parametrize("ending", ["crashed", "timed_out", "cancelled", "unhealthy", "factory_failed"])
def test_failures_are_restarted_until_the_intensity_is_exceeded(ending: Ending) -> None:
    """With ``max_restarts=2`` two failures inside the window restart; the third fails."""
    options = ServiceOptions(max_restarts=2, restart_window=60.0)
    history = RestartHistory()
    assert decide(options, history, ending, 100.0).restart
    assert decide(options, history, ending, 110.0).restart
    assert not decide(options, history, ending, 159.0).restart


def test_restarts_outside_the_window_are_forgotten() -> None:
    """A restart older than ``restart_window`` no longer counts: the count resets."""
    options = ServiceOptions(max_restarts=2, restart_window=60.0)
    history = RestartHistory()
    assert decide(options, history, "crashed", 0.0).restart
    assert decide(options, history, "crashed", 30.0).restart
    assert decide(options, history, "crashed", 60.0).restart  # the one at 0.0 has left the window
    assert not decide(options, history, "crashed", 89.0).restart  # 30.0 and 60.0 are still in it
    assert decide(options, history, "crashed", 200.0).restart  # all forgotten
    assert list(history.times) == [200.0]


def test_a_refusal_is_not_recorded() -> None:
    options = ServiceOptions(max_restarts=1)
    history = RestartHistory()
    assert decide(options, history, "crashed", 1.0).restart
    assert not decide(options, history, "crashed", 2.0).restart
    assert list(history.times) == [1.0]


def test_max_restarts_zero_never_restarts() -> None:
    assert not decide(ServiceOptions(max_restarts=0), RestartHistory(), "crashed", 0.0).restart


@pytest.mark.parametrize(
    ("restart", "ending", "restarts"),
    [
        ("on-failure", "exited", False),
        ("always", "exited", True),
        ("never", "exited", False),
        ("never", "crashed", False),
        ("on-failure", "crashed", True),
        ("always", "crashed", True),
    ],
)
def test_restart_modes(restart: str, ending: Ending, restarts: bool) -> None:
    """A clean exit is restarted only with ``"always"``; ``"never"`` restarts nothing."""
    options = ServiceOptions(restart=restart)  # type: ignore[arg-type]
    assert decide(options, RestartHistory(), ending, 0.0).restart is restarts


def test_the_decision_carries_the_backoff() -> None:
    options = ServiceOptions(backoff=(0.0, 1.0), max_restarts=10)
    history = RestartHistory()
    delays = [decide(options, history, "crashed", float(now)).delay for now in range(7)]
    assert delays == [0.0, BACKOFF_BASE, 2 * BACKOFF_BASE, 4 * BACKOFF_BASE, 8 * BACKOFF_BASE, 16 * BACKOFF_BASE, 1.0]


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [((0.0, 30.0), [0.0, 0.05, 0.1, 0.2]), ((1.0, 30.0), [1.0, 1.0, 2.0, 4.0]), ((2.0, 5.0), [2.0, 2.0, 4.0, 5.0])],
)
def test_restart_delay_doubles_up_to_the_maximum(backoff: tuple[float, float], expected: list[float]) -> None:
    """The first restart in a window waits ``first``; each next one twice as long as the
    one before (from a small base when ``first`` is 0), never more than ``maximum``."""
    options = ServiceOptions(backoff=backoff)
    assert [restart_delay(options, count) for count in range(1, 5)] == pytest.approx(expected)


@pytest.mark.parametrize(
    "options",
    [
        {"max_restarts": -1},
        {"replicas": 0},
        {"restart": "sometimes"},
        {"restart_window": 0},
        {"health_interval": -1.0},
        {"health_timeout": float("inf")},
        {"grace_period": float("nan")},
        {"timeout": 0},
        {"backoff": (2.0, 1.0)},
        {"backoff": (-1.0, 1.0)},
        {"health": ""},
        {"max_memory": "lots"},
    ],
)
def test_nonsense_options_raise_value_error(options: dict[str, object]) -> None:
    """Nonsense is refused when ServiceOptions is made, not when a service starts."""
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        ServiceOptions(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{"replicas": 1.5}, {"max_restarts": True}, {"timeout": "1"}])
def test_options_of_the_wrong_type_raise_type_error(options: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        ServiceOptions(**options)  # type: ignore[arg-type]
