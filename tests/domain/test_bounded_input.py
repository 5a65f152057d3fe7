"""Bounded input (issue 10): hostile manifests and canary.yaml files, as tables. Each is refused
with an InputError naming the file and the field or line, in little memory; ordinary manifests,
the repository's own among them, still parse and render. Pure functions: no git, no cluster."""

from __future__ import annotations

import copy
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.domain.limits import (
    MAX_APP_OBJECTS,
    MAX_APP_VALUES,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MiB,
    load_yaml,
)
from controller.domain.manifests import parse_manifests, select_files
from controller.domain.policy import Policy, parse_policy
from controller.domain.render import planned_objects
from controller.errors import InputError
from tests.domain.test_render import deployment

REPO = Path(__file__).resolve().parents[2]
POLICY = Policy(app="web", namespace="demo")
FILE = "apps/web/deployment.yml"
# Far below what the unbounded parser took for the alias bomb (1.7 GB), far above what a
# refusal needs; the exact figure does not matter.
MEMORY_CEILING = 48 * MiB


def refused(parse: Callable[[], object]) -> InputError:
    """The InputError `parse` raises, checked to come without a large allocation first."""
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as error:
            parse()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_CEILING, f"{peak / MiB:.0f} MiB to refuse {error.value}"
    return error.value


DEPLOYMENT_HEAD = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: app
          image: web:v1
          env:
"""

BILLION_LAUGHS = DEPLOYMENT_HEAD + "".join(
    f"            - name: {name.upper()}\n"
    f"              value: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
).replace("[*a, *a, *a, *a, *a, *a, *a, *a, *a]",
          '["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]')


def configmaps(count: int) -> str:
    return "".join(f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\n"
                   for i in range(count))


# (text, field of the InputError, words of its problem)
HOSTILE_YAML = [
    pytest.param(BILLION_LAUGHS, "line 15", "YAML aliases are not allowed (anchor &b)",
                 id="alias-bomb-in-pod-template-env"),
    pytest.param("a: &x 1\nb: *x\n", "line 1", "YAML aliases are not allowed", id="anchor"),
    pytest.param(DEPLOYMENT_HEAD + "            - name: A\n              value: *nowhere\n",
                 "line 15", "YAML aliases are not allowed (*nowhere)", id="alias"),
    pytest.param(DEPLOYMENT_HEAD + "            - name: DEEP\n              value: "
                 + "[" * 500 + "]" * 500 + "\n", "line 15",
                 f"nested deeper than {MAX_DEPTH} levels", id="list-500-deep"),
    pytest.param("a:\n" + "".join(f"{'  ' * (i + 1)}k{i}:\n" for i in range(200)), "line 65",
                 f"nested deeper than {MAX_DEPTH} levels", id="mapping-200-deep"),
    pytest.param("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\ndata:\n  k: \""
                 + "x" * MAX_FILE_BYTES + "\"\n", "", "over the limit of 1 MiB per file",
                 id="file-over-1-MiB"),
    pytest.param(configmaps(MAX_APP_OBJECTS + 1), f"document {MAX_APP_OBJECTS + 1}",
                 f"more than {MAX_APP_OBJECTS} objects in the app", id="too-many-objects"),
    pytest.param("[" + "a," * MAX_APP_VALUES + "a]", "line 1",
                 f"more than {MAX_APP_VALUES} YAML values", id="too-many-values"),
    pytest.param("a: 1\nb: 2\na: 3\n", "line 3", "the key 'a' is repeated", id="duplicate-key"),
    pytest.param("data:\n  8080: http\n", "line 2", "mapping keys must be strings; quote '8080'",
                 id="number-key"),
    pytest.param("? [a, b]\n: c\n", "line 1", "mapping keys must be strings", id="list-key"),
    pytest.param("a:\n  <<: {b: 1}\n", "line 2", "merge keys (<<) are not allowed",
                 id="merge-key"),
    pytest.param("a: !!python/object:os.system x\n", "line 1", "tag", id="python-tag"),
    pytest.param("a: !!set {b}\n", "line 1", "the YAML tag tag:yaml.org,2002:set",
                 id="set-tag"),
    pytest.param("a: 1" + "0" * 5000 + "\n", "line 1", "as a YAML int", id="huge-int"),
    pytest.param("a: [b\n", "", "invalid YAML", id="syntax"),
]


@pytest.mark.parametrize(("text", "field", "problem"), HOSTILE_YAML)
def test_hostile_yaml_in_a_manifest_is_refused(text: str, field: str, problem: str) -> None:
    error = refused(lambda: parse_manifests({FILE: text}, POLICY))
    assert (error.file, error.field) == (FILE, field)
    assert problem in error.problem


@pytest.mark.parametrize(("text", "field", "problem"), [
    param for param in HOSTILE_YAML if param.id not in ("too-many-objects", "syntax")])
def test_hostile_yaml_in_canary_yaml_is_refused(text: str, field: str, problem: str) -> None:
    error = refused(lambda: parse_policy(text, "apps/web/canary.yaml", "web"))
    assert (error.file, error.field) == ("apps/web/canary.yaml", field)
    assert problem in error.problem


def test_the_limits_are_per_app_not_per_file() -> None:
    files = {f"apps/web/c{i}.yml": "# " + "x" * (MAX_FILE_BYTES - 100) + "\n" for i in range(9)}
    error = refused(lambda: parse_manifests(files, POLICY))
    assert error.file == "apps/web/c8.yml"
    assert "the app's manifests pass the limit of 8 MiB per app" in error.problem
    half = MAX_APP_OBJECTS // 2 + 1
    error = refused(lambda: parse_manifests(
        {"apps/web/a.yml": configmaps(half), "apps/web/b.yml": configmaps(half)
         .replace("name: c", "name: d")}, POLICY))
    assert error.file == "apps/web/b.yml"
    assert "objects in the app" in error.problem


def test_a_list_of_objects_counts_each_item() -> None:
    items = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}"}}
             for i in range(MAX_APP_OBJECTS + 1)]
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
    error = refused(lambda: parse_manifests({FILE: text}, POLICY))
    assert (error.field, error.file) == ("document 1", FILE)


def with_path(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """obj with the dotted path set (`containers.0` indexes a list)."""
    obj = copy.deepcopy(obj)
    keys = path.split(".")
    holder: Any = obj
    for key in keys[:-1]:
        holder = holder[int(key)] if isinstance(holder, list) else holder.setdefault(key, {})
    holder[keys[-1]] = value
    return obj


POD_SPEC = "spec.template.spec"
CONTAINER = f"{POD_SPEC}.containers.0"


def pod() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app", "image": "web:v1"}]}}


def config(kind: str = "ConfigMap") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": "cfg"}, "data": {"k": "v"}}


# (object, dotted path to set, value, field named by the error, words of its problem)
WRONG_TYPES = [
    (deployment(), "metadata.labels", "oops", "metadata.labels", "must be a mapping of strings"),
    (deployment(), "metadata.namespace", 5, "metadata.namespace", "must be a string"),
    (deployment(), "spec", "x", "spec", "must be a mapping, got a string"),
    (deployment(), "spec", None, "spec", "must be a mapping, got nothing"),
    (deployment(), "spec.replicas", "3", "spec.replicas", "must be a whole number, got a string"),
    (deployment(), "spec.replicas", True, "spec.replicas", "must be a whole number, got a boolean"),
    (deployment(), "spec.replicas", 2.5, "spec.replicas", "must be a whole number, got 2.5"),
    (deployment(), "spec.replicas", -1, "spec.replicas", "must not be negative"),
    (deployment(), "spec.selector", "app=web", "spec.selector", "must be a mapping"),
    (deployment(), "spec.selector.matchLabels", ["app"], "spec.selector.matchLabels",
     "must be a mapping of strings"),
    (deployment(), "spec.template", "x", "spec.template", "must be a mapping"),
    (deployment(), "spec.template.metadata", ["x"], "spec.template.metadata",
     "must be a mapping, got a list"),
    (deployment(), POD_SPEC, "x", POD_SPEC, "must be a mapping"),
    (deployment(), f"{POD_SPEC}.volumes", ["x"], f"{POD_SPEC}.volumes[0]",
     "must be a mapping, got a string"),
    (deployment(), f"{POD_SPEC}.volumes", "x", f"{POD_SPEC}.volumes",
     "must be a list of mappings, got a string"),
    (deployment(), f"{POD_SPEC}.volumes", [{"name": "c", "configMap": "cfg"}],
     f"{POD_SPEC}.volumes[0].configMap", "must be a mapping"),
    (deployment(), f"{POD_SPEC}.volumes", [{"name": "s", "secret": {"secretName": 5}}],
     f"{POD_SPEC}.volumes[0].secret.secretName", "must be a string, got a number"),
    (deployment(), f"{POD_SPEC}.volumes", [{"name": "p", "projected": "x"}],
     f"{POD_SPEC}.volumes[0].projected", "must be a mapping"),
    (deployment(), f"{POD_SPEC}.volumes", [{"name": "p", "projected": {"sources": {}}}],
     f"{POD_SPEC}.volumes[0].projected.sources", "must be a list of mappings"),
    (deployment(), f"{POD_SPEC}.volumes",
     [{"name": "p", "projected": {"sources": [{"secret": ["x"]}]}}],
     f"{POD_SPEC}.volumes[0].projected.sources[0].secret", "must be a mapping"),
    (deployment(), f"{POD_SPEC}.containers", "x", f"{POD_SPEC}.containers",
     "must be a list of mappings, got a string"),
    (deployment(), f"{POD_SPEC}.containers", ["x"], f"{POD_SPEC}.containers[0]",
     "must be a mapping"),
    (deployment(), f"{POD_SPEC}.initContainers", [{"name": "i", "env": {"A": "b"}}],
     f"{POD_SPEC}.initContainers[0].env", "must be a list of mappings, got a mapping"),
    (deployment(), f"{CONTAINER}.env", [1], f"{POD_SPEC}.containers[0].env[0]",
     "must be a mapping, got a number"),
    (deployment(), f"{CONTAINER}.env", [{"name": "A", "valueFrom": "x"}],
     f"{POD_SPEC}.containers[0].env[0].valueFrom", "must be a mapping"),
    (deployment(), f"{CONTAINER}.env", [{"name": "A", "valueFrom": {"secretKeyRef": ["x"]}}],
     f"{POD_SPEC}.containers[0].env[0].valueFrom.secretKeyRef", "must be a mapping"),
    (deployment(), f"{CONTAINER}.env",
     [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": 1, "key": "k"}}}],
     f"{POD_SPEC}.containers[0].env[0].valueFrom.configMapKeyRef.name", "must be a string"),
    (deployment(), f"{CONTAINER}.envFrom", {}, f"{POD_SPEC}.containers[0].envFrom",
     "must be a list of mappings, got a mapping"),
    (deployment(), f"{CONTAINER}.envFrom", [{"configMapRef": "cfg"}],
     f"{POD_SPEC}.containers[0].envFrom[0].configMapRef", "must be a mapping"),
    (pod(), "spec", "x", "spec", "must be a mapping"),
    (pod(), "spec.containers", "x", "spec.containers", "must be a list of mappings"),
    (pod(), "spec.volumes", [None], "spec.volumes[0]", "must be a mapping, got nothing"),
    (config(), "data", "k=v", "data", "must be a mapping"),
    (config(), "data", {"port": 8080}, "data.port", "must be a string, got a number"),
    (config("Secret"), "stringData", ["x"], "stringData", "must be a mapping"),
    (config("Secret"), "binaryData", {"k": True}, "binaryData.k", "must be a string"),
]


@pytest.mark.parametrize(("obj", "path", "value", "field", "problem"), WRONG_TYPES,
                         ids=[f"{case[0]['kind']}-{case[1]}={case[2]!r}" for case in WRONG_TYPES])
def test_a_field_the_controller_reads_must_have_its_type(obj: dict[str, Any], path: str,
                                                         value: Any, field: str,
                                                         problem: str) -> None:
    text = yaml.safe_dump_all([deployment(name="other"), with_path(obj, path, value)])
    error = refused(lambda: parse_manifests({FILE: text}, POLICY))
    assert (error.file, error.field) == (FILE, f"document 2: {field}")
    assert problem in error.problem


@pytest.mark.parametrize("obj", [
    deployment(replicas=None), deployment(replicas=0), pod(), config(), config("Secret"),
    with_path(deployment(), "spec", {}),  # the server says what is missing
    with_path(deployment(), f"{CONTAINER}.env", None),
    with_path(deployment(), f"{POD_SPEC}.volumes",
              [{"name": "p", "projected": {"sources": [{"configMap": {"name": "cfg"}}]}},
               {"name": "s", "secret": {"secretName": "cfg", "optional": True}}]),
], ids=lambda obj: obj["kind"])
def test_well_typed_objects_parse_and_render(obj: dict[str, Any]) -> None:
    manifests = parse_manifests({FILE: yaml.safe_dump_all([obj, deployment(name="other")])},
                                POLICY)
    assert planned_objects(POLICY, manifests, {})


def folder_files(folder: Path, policy: Policy) -> dict[str, str]:
    names = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    return {f"{folder.name}/{name}": (folder / name).read_text()
            for name in select_files(names, policy)}


def repository_folders() -> Iterator[Path]:
    yield REPO / "deploy-repo-example" / "sampleapp"
    yield REPO / "manifests"


@pytest.mark.parametrize("folder", list(repository_folders()), ids=lambda p: p.name)
def test_the_repository_s_own_manifests_still_parse(folder: Path) -> None:
    policy_file = folder / "canary.yaml"
    policy = parse_policy(policy_file.read_text(), str(policy_file), folder.name) \
        if policy_file.exists() else Policy(app=folder.name)
    files = folder_files(folder, policy)
    assert files
    manifests = parse_manifests(files, policy)
    assert planned_objects(policy, manifests, {})
    for path, text in files.items():
        # What the bounded reader builds equals what PyYAML builds: nothing changed meaning.
        assert load_yaml(text, path) == list(yaml.safe_load_all(text))


def test_ordinary_yaml_reads_as_pyyaml_reads_it() -> None:
    text = """\
# a comment
---
a: "1"
b: 1
c: 1.5
d: true
e: null
f: ~
g: 2024-01-02
h: !!str 3
i: |
  line
  lines
j: [1, {k: v}, []]
"yes": quoted keys stay strings
---
---
- just
- a list
"""
    expected = list(yaml.safe_load_all(text))
    expected[0]["g"] = "2024-01-02"  # a date stays its text, as kubectl passes it on
    assert load_yaml(text, "x.yml") == expected
    assert load_yaml("", "x.yml") == []


def test_scalars_kubectl_reads_as_strings() -> None:
    """YAML 1.1's `=` and dates (even impossible ones) are strings to kubectl, and here."""
    text = "a: =\nb: 2024-13-45\nc: 2024-01-02T10:00:00Z\nd: !!timestamp 2001-12-14\n"
    assert load_yaml(text, "x.yml") == [
        {"a": "=", "b": "2024-13-45", "c": "2024-01-02T10:00:00Z", "d": "2001-12-14"}]
