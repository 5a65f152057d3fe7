"""Push webhooks from Gitea/Forgejo, GitHub and GitLab: is the request genuine, and is it a
push? Pure: headers and body in, a decision out. The secret is compared in constant time and
never part of any message."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from enum import StrEnum


class Hook(StrEnum):
    ACCEPTED = "accepted"  # a genuine push: reconcile now
    IGNORED = "ignored"  # genuine, but not a push (ping, issue comment, ...)
    UNSIGNED = "unsigned"  # no signature or token header at all
    FORGED = "forged"  # a signature or token that does not match the secret


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def classify(headers: Mapping[str, str], body: bytes, secret: str) -> tuple[str, Hook]:
    """(forge, verdict) for a webhook request."""
    h = _lower(headers)
    if "x-gitea-signature" in h or "x-forgejo-signature" in h:
        forge, event = "gitea", h.get("x-gitea-event") or h.get("x-forgejo-event", "")
        given = h.get("x-gitea-signature") or h.get("x-forgejo-signature", "")
        genuine = hmac.compare_digest(given.lower(), _hex_hmac(secret, body))
    elif "x-hub-signature-256" in h:
        forge, event = "github", h.get("x-github-event", "")
        given = h["x-hub-signature-256"]
        genuine = hmac.compare_digest(given.lower(), f"sha256={_hex_hmac(secret, body)}")
    elif "x-gitlab-token" in h:
        forge, event = "gitlab", h.get("x-gitlab-event", "")
        genuine = hmac.compare_digest(h["x-gitlab-token"].encode(), secret.encode())
    else:
        return "unknown", Hook.UNSIGNED
    if not genuine:
        return forge, Hook.FORGED
    push = event.lower() in ("push", "push hook")
    return forge, Hook.ACCEPTED if push else Hook.IGNORED
