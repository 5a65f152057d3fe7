"""PromQL templates of canary.yaml, filled per variant: `{{ app }}`, `{{ namespace }}`,
`{{ variant }}`, `{{ pod_regex }}`, `{{ window }}` (policy.py rejects any other name)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.domain.policy import TEMPLATE_VARIABLE


def pod_regex(workloads: Sequence[str], variant: str) -> str:
    """Pods of the variant's workloads, as the seed's panels select them: `sampleapp-canary-.*`."""
    names = sorted(workloads)
    stem = names[0] if len(names) == 1 else f"({'|'.join(names)})"
    return f"{stem}-{variant}-.*"


def fill(template: str, values: Mapping[str, str]) -> str:
    return TEMPLATE_VARIABLE.sub(lambda m: values[m.group(1)], template)


def variables(app: str, namespace: str, variant: str, workloads: Sequence[str],
              window_seconds: int) -> dict[str, str]:
    return {"app": app, "namespace": namespace, "variant": variant,
            "pod_regex": pod_regex(workloads, variant), "window": f"{window_seconds}s"}

