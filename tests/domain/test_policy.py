"""canary.yaml validation: every mistake names the file, the field and the problem."""

from __future__ import annotations

import pytest

from controller.domain.manifests import parse_manifests, select_files
from controller.domain.policy import DEFAULT_GOOD, Policy, parse_policy
from controller.errors import InputError

FILE = "apps/sampleapp/canary.yaml"


def test_defaults_from_an_empty_file() -> None:
    policy = parse_policy("", FILE, "sampleapp")
    assert policy == Policy(app="sampleapp")
    assert policy.percentage == 25
    assert policy.analysis.pass_score == 95
    assert policy.analysis.marginal_score == 75
    assert policy.analysis.metrics[0].good == DEFAULT_GOOD
    assert policy.analysis.metrics[0].direction == "higher"


def test_a_full_policy() -> None:
    policy = parse_policy("""
app: web
namespace: shop
percentage: 50
bootstrap: direct
manifests: ["k8s/*.yml"]
promote: "ABCDEF1234567890ABCDEF1234567890ABCDEF12"
judgment: auto
approvers: [lead@example.com]
requireSignedApproval: true
analysis:
  warmup: 30s
  interval: 10s
  window: 1m30s
  deadline: 1h
  thresholds: {pass: 90, marginal: 60}
  metrics:
  - name: latency-p99
    kind: samples
    query: 'histogram_quantile(0.99, rate(x{pod=~"{{ pod_regex }}"}[{{ window }}]))'
    direction: lower
    weight: 2
    tolerance: 0.1
""", FILE, "sampleapp")
    assert (policy.app, policy.namespace, policy.percentage) == ("web", "shop", 50)
    assert policy.promote == "abcdef1234567890abcdef1234567890abcdef12"
    assert policy.manifests == ("k8s/*.yml",)
    assert (policy.analysis.warmup, policy.analysis.window, policy.analysis.deadline) == (
        30, 90, 3600)
    assert policy.analysis.metrics[0].kind == "samples"
    assert policy.analysis.metrics[0].weight == 2


@pytest.mark.parametrize(("text", "field", "problem"), [
    ("percentage: 0", "percentage", "must be in (0, 100]"),
    ("percentage: 150", "percentage", "must be in (0, 100]"),
    ("percentage: lots", "percentage", "must be a number, got a string"),
    ("percentage: true", "percentage", "got a boolean"),
    ("promote: main", "promote", "must be the full commit sha"),
    ("promote: abc", "promote", "must be the full commit sha"),
    # A prefix could be brute-forced onto a later commit: only the full hash approves.
    ("promote: abcdef1", "promote", "must be the full commit sha (40 hex"),
    ("promote: abcdef1234567890abcdef1234567890abcdef1", "promote", "must be the full"),
    ("promote: 1234567", "promote", "quoted string"),
    ("bootstrap: yolo", "bootstrap", "must be one of canary, direct"),
    ("replicas: 3", "replicas", "unknown field"),
    ("namespace: Prod_1", "namespace", "must be a DNS label"),
    ("manifests: ['../other/*.yml']", "manifests[0]", "must stay inside the app folder"),
    ("manifests: [3]", "manifests[0]", "must be a non-empty string"),
    ("analysis: {warmup: soon}", "analysis.warmup", "must be a duration"),
    ("analysis: {thresholds: {pass: 50, marginal: 80}}", "analysis.thresholds",
     "marginal (80) <= pass (50)"),
    ("analysis: {metrics: [{name: x, kind: ratio, good: a}]}", "analysis.metrics[0].total",
     "needs both good and total"),
    ("analysis: {metrics: [{name: x, kind: samples, query: 'q{a=\"{{ pod }}\"}'}]}",
     "analysis.metrics[0].query", "unknown template variable {{ pod }}"),
    ("analysis: {metrics: [{name: x, kind: samples, query: q, colour: red}]}",
     "analysis.metrics[0].colour", "unknown field"),
    ("analysis: {metrics: [{name: l, kind: histogram, query: q}]}",
     "analysis.metrics[0].objective", "needs its latency objective in seconds"),
    ("analysis: {metrics: [{name: l, kind: histogram, query: q, objective: 0.25, "
     "direction: higher}]}", "analysis.metrics[0].direction", "lower is better"),
    ("analysis: {metrics: [{name: l, kind: histogram, objective: 0.25}]}",
     "analysis.metrics[0].query", "a histogram metric needs a query"),
    ("analysis: {metrics: [{name: x, kind: ratio, good: a, total: b, objective: 1}]}",
     "analysis.metrics[0].objective", "only a histogram metric has an objective"),
    ("analysis: {metrics: [{name: x, kind: samples, query: q, good: a}]}",
     "analysis.metrics[0].good", "only a ratio metric has good and total"),
    ("analysis: {metrics: [{name: x, kind: samples, query: q, tolerance: -1}]}",
     "analysis.metrics[0].tolerance", "must not be negative"),
    ("- a list", "(top level)", "must be a mapping"),
])
def test_invalid_policies_name_the_field(text: str, field: str, problem: str) -> None:
    with pytest.raises(InputError) as error:
        parse_policy(text, FILE, "sampleapp")
    assert error.value.file == FILE
    assert error.value.field == field
    assert problem in error.value.problem
    assert str(error.value).startswith(f"{FILE}: {field}: ")


def test_a_histogram_metric_and_the_default_tolerances() -> None:
    policy = parse_policy(
        "analysis:\n  metrics:\n"
        "    - {name: latency, kind: histogram, query: 'sum by (le) (x[{{ window }}])', "
        "objective: 0.25, critical: true}\n"
        "    - {name: errors, good: a, total: b, tolerance: 0.01}\n", FILE, "sampleapp")
    latency, errors = policy.analysis.metrics
    assert (latency.kind, latency.direction, latency.objective, latency.tolerance) == (
        "histogram", "lower", 0.25, None)  # None: the kind's default, 0.5 points
    assert (errors.kind, errors.direction, errors.tolerance) == ("ratio", "higher", 0.01)


def test_malformed_yaml_names_the_line() -> None:
    with pytest.raises(InputError, match=r"canary.yaml: invalid YAML: .*line 2"):
        parse_policy("app: x\n  percentage: [1\n", FILE, "sampleapp")


def test_manifest_errors_name_file_and_document() -> None:
    policy = Policy(app="sampleapp")
    with pytest.raises(InputError, match=r"^a/d.yml: document 2: metadata.name: is required$"):
        parse_manifests({"a/d.yml": "kind: ConfigMap\napiVersion: v1\nmetadata: {name: x}\n"
                                    "---\nkind: ConfigMap\napiVersion: v1\nmetadata: {}\n"},
                        policy)
    with pytest.raises(InputError, match=r"^a/d.yml: invalid YAML: .*line 2"):
        parse_manifests({"a/d.yml": "kind: [\n"}, policy)
    doc = "kind: ConfigMap\napiVersion: v1\nmetadata: {name: x}\n"
    with pytest.raises(InputError, match=r"also defined in a/a.yml#1"):
        parse_manifests({"a/a.yml": doc, "a/b.yml": doc}, policy)


def test_namespaces_default_to_the_apps_and_lists_are_flattened() -> None:
    policy = Policy(app="sampleapp", namespace="shop")
    found = parse_manifests({"d.yml": """
kind: List
apiVersion: v1
items:
- {kind: ConfigMap, apiVersion: v1, metadata: {name: a}}
- {kind: ClusterRole, apiVersion: rbac.authorization.k8s.io/v1, metadata: {name: b}}
- {kind: ConfigMap, apiVersion: v1, metadata: {name: c, namespace: other}}
"""}, policy)
    assert [m.key for m in found] == [("ConfigMap", "shop", "a"), ("ClusterRole", "", "b"),
                                      ("ConfigMap", "other", "c")]


def test_forms_kubectl_accepts_every_list_kind_and_comment_only_documents() -> None:
    found = parse_manifests({"d.yml": """# a header comment, nothing else
---
kind: ConfigMapList
apiVersion: v1
items:
- {kind: ConfigMap, apiVersion: v1, metadata: {name: a}, data: {MODE: =}}
---
# only a comment
---
kind: RoleBindingList
apiVersion: rbac.authorization.k8s.io/v1
items:
- kind: RoleBinding
  apiVersion: rbac.authorization.k8s.io/v1
  metadata: {name: r, annotations: {since: 2024-01-02}}
  roleRef: {kind: Role, name: x, apiGroup: rbac.authorization.k8s.io}
"""}, Policy(app="a", namespace="shop"))
    assert [m.key for m in found] == [("ConfigMap", "shop", "a"), ("RoleBinding", "shop", "r")]
    assert found[0].obj["data"] == {"MODE": "="}
    assert found[1].obj["metadata"]["annotations"] == {"since": "2024-01-02"}
    with pytest.raises(InputError, match=r"document 1: items: a SecretList needs a list"):
        parse_manifests({"d.yml": "kind: SecretList\napiVersion: v1\nitems: {}\n"},
                        Policy(app="a"))


def test_manifest_globs_select_files() -> None:
    names = ["canary.yaml", "deployment.yml", "service.yaml", "README.md", "k8s/extra.yml"]
    assert select_files(names, Policy(app="a")) == ["deployment.yml", "service.yaml"]
    assert select_files(names, Policy(app="a", manifests=("k8s/*.yml",))) == ["k8s/extra.yml"]
