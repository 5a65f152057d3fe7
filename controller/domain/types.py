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
CONTROLLER_PREFIX = "gitops-canary/"  # labels and annotations only the controller writes
LABEL_VERSION = "gitops-canary/version"
LABEL_APP = "gitops-canary/app"
ANNOTATION_FINGERPRINT = "gitops-canary/fingerprint"
ANNOTATION_REVISION = "gitops-canary/revision"
# The workload's own fingerprint (its pod template and the configs it reads): only the
# workloads whose own fingerprint changed get a baseline and a canary.
ANNOTATION_WORKLOAD_FINGERPRINT = "gitops-canary/workload-fingerprint"
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
    ANALYZING = "Analyzing"      # variants ready: warm-up, then baseline vs canary each interval
    AWAITING = "AwaitingPromotion"  # the analysis passed (or nothing to compare): a person decides
    FAILED = "Failed"            # the analysis failed or stayed inconclusive: revert (or override)
    PROMOTING = "Promoting"      # new spec applied to stable; waiting for its rollout


class StatusState(StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"
