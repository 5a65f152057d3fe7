"""Apps are reconciled side by side (issue 14): an app whose API calls are slow (an admission
webhook, a loaded server) holds no other app. Real commits, real cluster; the slowness is added
to the real requests of one app on their way to the server."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.controller.conftest import Harness, deployment

pytestmark = pytest.mark.cluster


def test_an_app_with_slow_api_calls_holds_no_other(harness: Harness,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("slow", "fast"):
        harness.repo.write(f"apps/{name}/canary.yaml", {"namespace": harness.namespace,
                                                         "bootstrap": "direct"})
        harness.repo.write(f"apps/{name}/deployment.yml", deployment(name, "10", replicas=1))
    harness.repo.commit("two apps")
    rest = harness.api.rest_client
    send = rest.request
    calls: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        if "/deployments/slow" in url:
            time.sleep(1.0)
        try:
            return send(method, url, *args, **kwargs)
        finally:
            with lock:
                calls.append((f"{method} {url}", started, time.monotonic()))

    monkeypatch.setattr(rest, "request", request)
    result = harness.reconcile()
    monkeypatch.undo()

    assert sorted(o.app for o in result.outcomes) == ["fast", "slow"]
    assert set(harness.deployments()) == {"slow", "fast"}
    slow = [(s, e) for call, s, e in calls if "/deployments/slow" in call]
    fast = [s for call, s, _ in calls if "/deployments/fast" in call]
    assert slow
    assert fast
    # The fast app's calls went out while one of the slow app's was held.
    assert any(s < f < e for s, e in slow for f in fast), (slow, fast)
