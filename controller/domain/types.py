"""Names for the values that flow through the controller."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NewType

AppName = NewType("AppName", str)
Sha = NewType("Sha", str)
Fingerprint = NewType("Fingerprint", str)

# Raw Kubernetes objects as parsed from YAML or returned by the API.
KubeObject = dict[str, Any]

FIELD_MANAGER = "gitops-canary"
LABEL_VERSION = "gitops-canary/version"
LABEL_APP = "gitops-canary/app"
ANNOTATION_FINGERPRINT = "gitops-canary/fingerprint"
ANNOTATION_REVISION = "gitops-canary/revision"
ANNOTATION_PREVIOUS_FINGERPRINT = "gitops-canary/previous-fingerprint"
ANNOTATION_PREVIOUS_REVISION = "gitops-canary/previous-revision"

WORKLOAD_KINDS = frozenset({"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Pod"})


class Variant(StrEnum):
    BASELINE = "baseline"
    CANARY = "canary"


class Phase(StrEnum):
    """Where an app stands. Stored in the cluster, so a restarted controller resumes."""

    STABLE = "Stable"            # live stable equals git; no variants
    PROGRESSING = "Progressing"  # variants applied, waiting for them to be ready
    AWAITING = "AwaitingPromotion"  # variants ready; a person (or the analysis) decides
    PROMOTING = "Promoting"      # new spec applied to stable; waiting for its rollout
    FAILED = "Failed"            # the repository's input is invalid or refused


class StatusState(StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"
