"""Webhook verification, as a table: genuine pushes wake the controller, forgeries do not."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from controller.domain.webhooks import Hook, classify

SECRET = "s3cret"
BODY = b'{"ref": "refs/heads/main"}'
SIGNED = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
WRONG = hmac.new(b"guess", BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(("headers", "forge", "verdict"), [
    ({"X-Gitea-Event": "push", "X-Gitea-Signature": SIGNED}, "gitea", Hook.ACCEPTED),
    ({"X-Forgejo-Event": "push", "X-Forgejo-Signature": SIGNED}, "gitea", Hook.ACCEPTED),
    ({"X-Gitea-Event": "push", "X-Gitea-Signature": WRONG}, "gitea", Hook.FORGED),
    ({"X-Gitea-Event": "issues", "X-Gitea-Signature": SIGNED}, "gitea", Hook.IGNORED),
    ({"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={SIGNED}"}, "github",
     Hook.ACCEPTED),
    ({"X-GitHub-Event": "push", "X-Hub-Signature-256": SIGNED}, "github", Hook.FORGED),
    ({"X-GitHub-Event": "ping", "X-Hub-Signature-256": f"sha256={SIGNED}"}, "github",
     Hook.IGNORED),
    ({"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET}, "gitlab", Hook.ACCEPTED),
    ({"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "nope"}, "gitlab", Hook.FORGED),
    ({"X-Gitea-Event": "push"}, "unknown", Hook.UNSIGNED),
    ({}, "unknown", Hook.UNSIGNED),
])
def test_classify(headers: dict[str, str], forge: str, verdict: Hook) -> None:
    assert classify(headers, BODY, SECRET) == (forge, verdict)


def test_a_signature_of_another_body_is_forged() -> None:
    headers = {"X-Gitea-Event": "push", "X-Gitea-Signature": SIGNED}
    assert classify(headers, BODY + b" ", SECRET)[1] is Hook.FORGED
