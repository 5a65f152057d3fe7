"""The install's RBAC objects, moved into a test's namespaces: shared by the RBAC tests and the
image tests, which run the controller under exactly the install's grants."""

from __future__ import annotations

import copy
from typing import Any

RBAC_KINDS = {"ServiceAccount", "Role", "ClusterRole", "RoleBinding"}


def rbac_copy(objects: list[dict[str, Any]], namespaces: dict[str, str],
              cluster_roles: dict[str, str]) -> list[dict[str, Any]]:
    """The RBAC objects of the install, moved to the test's namespaces and names."""
    copies = []
    for obj in objects:
        if obj["kind"] not in RBAC_KINDS:
            continue
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        if "namespace" in meta:
            meta["namespace"] = namespaces[meta["namespace"]]
        if obj["kind"] == "ClusterRole":
            meta["name"] = cluster_roles[meta["name"]]
        ref = obj.get("roleRef") or {}
        if ref.get("kind") == "ClusterRole":
            ref["name"] = cluster_roles[ref["name"]]
        for subject in obj.get("subjects") or []:
            subject["namespace"] = namespaces[subject["namespace"]]
        copies.append(obj)
    return copies
