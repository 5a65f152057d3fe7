"""A real Gitea for the forge tests: built from its Go module, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localcluster import gitea as localgitea


@pytest.fixture(scope="session")
def gitea(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localgitea.Gitea]:
    """A fresh Gitea on loopback: an admin `gitops` with an all-scopes token, no repositories."""
    state = tmp_path_factory.mktemp("gitea")
    forge = localgitea.start(state)
    try:
        yield forge
    finally:
        left = localgitea.stop(state)
        assert not left, f"gitea processes left behind: {left}"
