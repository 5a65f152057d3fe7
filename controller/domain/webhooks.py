"""Push webhooks from Gitea/Forgejo, GitHub and GitLab: is the request genuine, and is it a
push? Pure: headers and body in, a decision out. The secret is compared in constant time and
never part of any message.

Every header value comes from whoever can reach the port, so `classify` decides on any input
and never raises: a signature or token that is not even well-formed (empty, non-ASCII, not hex,
the wrong length) is simply forged."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from enum import StrEnum

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class Hook(StrEnum):
    ACCEPTED = "accepted"  # a genuine push: reconcile now
    IGNORED = "ignored"  # genuine, but not a push (ping, issue comment, ...)
    UNSIGNED = "unsigned"  # no signature or token header at all
    FORGED = "forged"  # a signature or token that does not match the secret


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _key(secret: str) -> bytes:
    """The secret's bytes; surrogateescape gives back the bytes of a non-UTF-8 environment."""
    return secret.encode("utf-8", "surrogateescape")


def _hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def _signed(given: str, secret: str, body: bytes, prefix: str = "") -> bool:
    """A hex HMAC-SHA256 of the body after `prefix`, checked for shape first: the shape is
    public, so refusing a malformed value early leaks nothing, and what reaches the constant-time
    comparison is ASCII bytes of equal length (compare_digest raises on non-ASCII str)."""
    given = given.lower() if given.isascii() else ""
    if not given.startswith(prefix) or not _SHA256_HEX.fullmatch(given[len(prefix):]):
        return False
    return hmac.compare_digest(given.encode("ascii"), (prefix + _hex_hmac(secret, body)).encode())


def _token(given: str, secret: str) -> bool:
    """GitLab sends the secret itself. Compared as bytes in constant time; a token that is empty
    or not ASCII (HTTP headers carry no reliable encoding) never matches."""
    if not given or not given.isascii() or not secret:
        return False
    return hmac.compare_digest(given.encode("ascii"), _key(secret))


def classify(headers: Mapping[str, str], body: bytes, secret: str) -> tuple[str, Hook]:
    """(forge, verdict) for a webhook request."""
    h = _lower(headers)
    if "x-gitea-signature" in h or "x-forgejo-signature" in h:
        forge, event = "gitea", h.get("x-gitea-event") or h.get("x-forgejo-event", "")
        given = h.get("x-gitea-signature") or h.get("x-forgejo-signature", "")
        genuine = _signed(given, secret, body)
    elif "x-hub-signature-256" in h:
        forge, event = "github", h.get("x-github-event", "")
        genuine = _signed(h["x-hub-signature-256"], secret, body, prefix="sha256=")
    elif "x-gitlab-token" in h:
        forge, event = "gitlab", h.get("x-gitlab-event", "")
        genuine = _token(h["x-gitlab-token"], secret)
    else:
        return "unknown", Hook.UNSIGNED
    if not genuine:
        return forge, Hook.FORGED
    push = event.lower() in ("push", "push hook")
    return forge, Hook.ACCEPTED if push else Hook.IGNORED
