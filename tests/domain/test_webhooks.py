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


MALFORMED = [
    pytest.param("", id="empty"),
    pytest.param(" ", id="blank"),
    pytest.param("é" * 64, id="non-ascii"),
    pytest.param(SIGNED[:-1] + "é", id="non-ascii-last"),
    pytest.param("\udcff" * 64, id="lone-surrogate"),
    pytest.param("\x00" * 64, id="nul"),
    pytest.param(SIGNED[:-1], id="short"),
    pytest.param(SIGNED + "0", id="long"),
    pytest.param("g" * 64, id="non-hex"),
    pytest.param(f" {SIGNED}", id="padded"),
    pytest.param("sha256=", id="prefix-only"),
    pytest.param(f"sha1={SIGNED}", id="other-algorithm"),
    pytest.param("sha256=" + "é" * 64, id="prefix-non-ascii"),
    pytest.param("x" * 100_000, id="huge"),
]


@pytest.mark.parametrize("given", MALFORMED)
@pytest.mark.parametrize(("header", "event", "forge"), [
    ("X-Gitea-Signature", {"X-Gitea-Event": "push"}, "gitea"),
    ("X-Forgejo-Signature", {"X-Forgejo-Event": "push"}, "gitea"),
    ("X-Hub-Signature-256", {"X-GitHub-Event": "push"}, "github"),
    ("X-Gitlab-Token", {"X-Gitlab-Event": "Push Hook"}, "gitlab"),
])
def test_a_malformed_signature_or_token_is_forged_never_an_error(
        given: str, header: str, event: dict[str, str], forge: str) -> None:
    assert classify({**event, header: given}, BODY, SECRET) == (forge, Hook.FORGED)


@pytest.mark.parametrize("secret", ["", "é-secret", "\udcff"])
def test_odd_secrets_never_raise(secret: str) -> None:
    for header in ("X-Gitea-Signature", "X-Hub-Signature-256", "X-Gitlab-Token"):
        assert classify({header: "é"}, BODY, secret)[1] is Hook.FORGED
        assert classify({header: ""}, BODY, secret)[1] is Hook.FORGED


def test_uppercase_hex_is_still_genuine() -> None:
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"SHA256={SIGNED.upper()}"}
    assert classify(headers, BODY, SECRET) == ("github", Hook.ACCEPTED)


@pytest.mark.parametrize("body", [b"", b"\x00\xff" * 1000, "é".encode()])
def test_any_body_is_decided(body: bytes) -> None:
    headers = {"X-Gitea-Event": "push", "X-Gitea-Signature": SIGNED}
    assert classify(headers, body, SECRET) == ("gitea", Hook.FORGED)
