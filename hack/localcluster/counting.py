"""What a Kubernetes client asks of the API server: tests and benchmarks count requests."""

from __future__ import annotations

import threading
from typing import Any

from kubernetes import client


class Requests:
    """The API requests an ApiClient sends (every call of the Kubernetes edge, typed or
    dynamic, ends in its REST client's `request`), as (method, path); an informer's own list
    and watch requests (its threads are named `watch-…`) are counted apart."""

    def __init__(self, api: client.ApiClient) -> None:
        self.made: list[tuple[str, str]] = []
        self.watching: list[tuple[str, str]] = []
        rest: Any = api.rest_client
        original = rest.request

        def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            path = url.split("://", 1)[-1].partition("/")[2].partition("?")[0]
            made = self.watching if threading.current_thread().name.startswith("watch-") \
                else self.made
            made.append((method, f"/{path}"))
            return original(method, url, *args, **kwargs)

        rest.request = request

    @property
    def count(self) -> int:
        return len(self.made)

    def clear(self) -> None:
        self.made.clear()
        self.watching.clear()
