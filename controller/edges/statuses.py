"""Commit statuses: one small protocol, and the git-notes sink that works with any git server.

A note on a commit under refs/notes/gitops-canary holds one line per context,
`gitops-canary/<app>: <state>: <description>`, so `git log --notes=gitops-canary` shows the
verdicts next to the commits. A status equal to the one already there is not written again.

A reconcile posts its statuses together (`post_all`): the notes sink fetches, writes and
pushes once for all of them; any other sink posts them in parallel, a few at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from controller.domain.types import Sha, StatusState
from controller.edges.git import GitSource
from controller.errors import CanaryError, TransientError

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


@dataclass(frozen=True)
class Posting:
    app: str
    sha: Sha
    state: StatusState
    description: str


POST_WORKERS = 8  # forge posts in flight at once: well under any forge's rate limits


def post_all(sink: StatusSink, postings: Sequence[Posting]) -> list[CanaryError | None]:
    """Post every status; per posting, None or the error that kept it from the sink."""
    many = getattr(sink, "post_many", None)
    if callable(many):
        result: list[CanaryError | None] = many(postings)
        return result

    def one(p: Posting) -> CanaryError | None:
        try:
            sink.post(p.app, p.sha, p.state, p.description)
        except CanaryError as error:
            return error
        return None

    if len(postings) <= 1:
        return [one(p) for p in postings]
    with ThreadPoolExecutor(min(POST_WORKERS, len(postings)),
                            thread_name_prefix="status") as pool:
        return list(pool.map(one, postings))


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
    """Posts hold a lock: a note is read, changed and written back whole, so two posts at
    once (from `post_all`'s threads, through a wrapping sink) would lose one of the lines."""

    def __init__(self, source: GitSource, attempts: int = 3) -> None:
        self.source = source
        self.attempts = attempts
        self._lock = threading.Lock()

    def post_many(self, postings: Sequence[Posting]) -> list[CanaryError | None]:
        """All in one notes commit per commit and one push: fetch the notes, add every line,
        push; pushed over by someone else, again from their notes."""
        with self._lock:
            return self._post_many(postings)

    def _post_many(self, postings: Sequence[Posting]) -> list[CanaryError | None]:
        for attempt in range(1, self.attempts + 1):
            try:
                self.source.fetch_notes()
                by_sha: dict[Sha, list[Posting]] = {}
                for p in postings:
                    by_sha.setdefault(p.sha, []).append(p)
                changed = []
                for sha, posted in by_sha.items():
                    lines = parse_note(self.source.read_note(sha))
                    before = dict(lines)
                    for p in posted:
                        lines[context_for(p.app)] = (str(p.state), clip(p.description))
                    if lines != before:
                        self.source.write_note(sha, format_note(lines))
                        changed.append((sha, posted))
                if changed:
                    self.source.push_notes()
            except TransientError as error:
                log.warning("pushing %d status(es) failed (attempt %d): %s", len(postings),
                            attempt, error)
                if attempt == self.attempts:
                    return [error] * len(postings)
                continue
            except CanaryError as error:
                return [error] * len(postings)
            for sha, posted in changed:
                for p in posted:
                    log.info("status %s %s on %s: %s", context_for(p.app), p.state, sha[:7],
                             clip(p.description))
            return [None] * len(postings)
        return [None] * len(postings)

    def post(self, app: str, sha: Sha, state: StatusState, description: str) -> bool:
        with self._lock:
            return self._post(app, sha, state, description)

    def _post(self, app: str, sha: Sha, state: StatusState, description: str) -> bool:
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
