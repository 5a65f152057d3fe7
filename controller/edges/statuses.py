"""Commit statuses: one small protocol, and the git-notes sink that works with any git server.

A note on a commit under refs/notes/gitops-canary holds one line per context,
`gitops-canary/<app>: <state>: <description>`, so `git log --notes=gitops-canary` shows the
verdicts next to the commits. A status equal to the one already there is not written again.
"""

from __future__ import annotations

import logging
from typing import Protocol

from controller.domain.types import Sha, StatusState
from controller.edges.git import GitSource
from controller.errors import TransientError

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 140


def context_for(app: str) -> str:
    return f"gitops-canary/{app}"


def clip(description: str) -> str:
    flat = " ".join(description.split())
    return flat if len(flat) <= MAX_DESCRIPTION else flat[: MAX_DESCRIPTION - 1] + "…"


class StatusSink(Protocol):
    def post(self, app: str, sha: Sha, state: StatusState, description: str) -> bool:
        """Record a status; return False when the same status was already there."""
        ...


def parse_note(text: str) -> dict[str, tuple[str, str]]:
    lines: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.split(": ", 2)
        if len(parts) == 3 and parts[0].startswith("gitops-canary/"):
            lines[parts[0]] = (parts[1], parts[2])
    return lines


def format_note(lines: dict[str, tuple[str, str]]) -> str:
    return "\n".join(f"{context}: {state}: {description}"
                     for context, (state, description) in sorted(lines.items()))


class GitNotesSink:
    def __init__(self, source: GitSource, attempts: int = 3) -> None:
        self.source = source
        self.attempts = attempts

    def post(self, app: str, sha: Sha, state: StatusState, description: str) -> bool:
        context, entry = context_for(app), (str(state), clip(description))
        for attempt in range(1, self.attempts + 1):
            self.source.fetch_notes()
            lines = parse_note(self.source.read_note(sha))
            if lines.get(context) == entry:
                return False
            lines[context] = entry
            self.source.write_note(sha, format_note(lines))
            try:
                self.source.push_notes()
            except TransientError as error:
                # Someone else pushed notes meanwhile: take theirs and add ours again.
                log.warning("pushing status notes failed (attempt %d): %s", attempt, error)
                if attempt == self.attempts:
                    raise
                continue
            log.info("status %s %s on %s: %s", context, state, sha[:7], entry[1])
            return True
        return False
