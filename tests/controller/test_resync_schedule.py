"""When each app is next compared with the cluster (`Resync`), on a controlled clock: every
interval, jittered, and soon after the watch reports someone else's change, but never twice
within the gap, however often it is reported."""

from __future__ import annotations

import random

from controller.drift import JITTER, Resync


def schedule(interval: float = 300.0, gap: float = 5.0) -> tuple[Resync, list[float]]:
    now = [1000.0]
    return Resync(interval, clock=lambda: now[0], rng=random.Random(3), gap=gap), now  # noqa: S311


def test_the_first_comparison_comes_within_one_interval_then_every_interval_jittered() -> None:
    resync, now = schedule()
    assert not resync.due("apps/web")  # scheduled at a random point within the interval
    now[0] += 300.0
    assert resync.due("apps/web")
    resync.done("apps/web")
    now[0] += 300.0 * (1 - JITTER) - 1
    assert not resync.due("apps/web")
    now[0] += 300.0 * 2 * JITTER + 2
    assert resync.due("apps/web")


def test_a_change_someone_else_made_makes_the_app_due_at_once() -> None:
    resync, _ = schedule()
    assert not resync.due("apps/web")
    assert resync.soon("apps/web") == 0.0
    assert resync.due("apps/web")
    assert not resync.due("apps/api")  # only that app


def test_changes_reported_right_after_a_comparison_wait_for_the_gap() -> None:
    resync, now = schedule(gap=5.0)
    resync.done("apps/web")
    now[0] += 1.0
    assert resync.soon("apps/web") == 4.0  # someone fighting the controller: not a tight loop
    assert not resync.due("apps/web")
    now[0] += 1.0
    assert resync.soon("apps/web") == 3.0  # reported again: the same time, not later
    now[0] += 3.0
    assert resync.due("apps/web")


def test_forgetting_an_app_drops_its_schedule() -> None:
    resync, now = schedule()
    resync.done("apps/web")
    resync.forget("apps/web")
    now[0] += 1.0
    assert resync.soon("apps/web") == 0.0  # no comparison on record: no gap to wait
