"""PromQL templates of canary.yaml, filled per variant: `{{ app }}`, `{{ namespace }}`,
`{{ variant }}`, `{{ pod_regex }}`, `{{ window }}` (policy.py rejects any other name)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.domain.policy import TEMPLATE_VARIABLE

# What the workload controllers append to a workload's name to name its pods: a Deployment's
# ReplicaSet hash and a random suffix, a ReplicaSet's or DaemonSet's random suffix, a
# StatefulSet's ordinal; a bare Pod is named as written.
POD_SUFFIX = {"Deployment": "-[a-z0-9]{1,10}-[a-z0-9]{5}", "ReplicaSet": "-[a-z0-9]{5}",
              "DaemonSet": "-[a-z0-9]{5}", "StatefulSet": "-[0-9]+", "Pod": ""}


def pod_regex(workloads: Sequence[tuple[str, str]], variant: str) -> str:
    """Pods of the variant's workloads, (kind, name) each, anchored to the names their
    controllers generate: `sampleapp-canary-[a-z0-9]{1,10}-[a-z0-9]{5}` for a Deployment, so
    another workload named `sampleapp-canary-x` never counts as the canary (PromQL's `=~` is
    anchored at both ends). Names are DNS names: only their dots need escaping, and a
    character class does it without a backslash that PromQL strings would have to escape."""
    parts = sorted({f"{name.replace('.', '[.]')}-{variant}{POD_SUFFIX.get(kind, '-.+')}"
                    for kind, name in workloads})
    return parts[0] if len(parts) == 1 else f"({'|'.join(parts)})"


def fill(template: str, values: Mapping[str, str]) -> str:
    return TEMPLATE_VARIABLE.sub(lambda m: values[m.group(1)], template)


def variables(app: str, namespace: str, variant: str, workloads: Sequence[tuple[str, str]],
              window_seconds: int) -> dict[str, str]:
    return {"app": app, "namespace": namespace, "variant": variant,
            "pod_regex": pod_regex(workloads, variant), "window": f"{window_seconds}s"}

