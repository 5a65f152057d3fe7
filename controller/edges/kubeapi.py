"""Kubernetes API failures in the project's words: 5xx, 429, connection errors and timeouts
are transient, the rest permanent with the server's own message (one module, so the edge's
reads, writes and watches say the same thing of the same failure)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TypeVar

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import DynamicApiError

from controller.errors import ApiError, ForbiddenError, TransientError

T = TypeVar("T")


class NotFound(ApiError):
    """The object does not exist (HTTP 404)."""


TYPED_PATCH = re.compile(r"^failed to create typed patch object \([^)]*\): ")


def message(error: Exception) -> str:
    """The server's own message, without the preamble that would push the field path out of a
    140-character status description."""
    body = getattr(error, "body", None) or ""
    try:
        message = str(json.loads(body).get("message") or body)
    except (ValueError, AttributeError):
        message = str(body or error)
    return TYPED_PATCH.sub("", message)


def translate(action: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except (DynamicApiError, ApiException) as error:
        status = getattr(error, "status", None) or 0
        raw = getattr(error, "body", None) or ""
        text = f"{action}: {message(error)}"
        # Server-side apply answers 500, not 422, when a manifest has a field the schema lacks.
        if status == 500 and "failed to create typed patch object" in str(raw):
            raise ApiError(text) from None
        if status == 429 or status >= 500 or status == 0:
            raise TransientError(text) from None
        if status == 403:
            raise ForbiddenError(text) from None
        if status == 404:
            raise NotFound(text) from None
        raise ApiError(text) from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise TransientError(f"{action}: Kubernetes API unreachable: {error}") from None
