"""The `canary.yaml` schema: the product's public API for a deploy repository (SPEC §3-4).

Parsing is strict: an unknown field, a wrong type or a bad value raises InputError naming the
file, the field (dotted path) and the problem, so the commit status can tell the author exactly
what to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from controller.domain.limits import load_yaml
from controller.errors import InputError

POLICY_FILE = "canary.yaml"
# A folder holding one of these is rendered by Kustomize, or by Helm (edges/renderers.py).
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
CHART_FILE = "Chart.yaml"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # SHA-1 or SHA-256 repositories
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
TEMPLATE_VARIABLE = re.compile(r"\{\{\s*([^{}\s]*)\s*\}\}")
TEMPLATE_VARIABLES = frozenset({"app", "namespace", "variant", "pod_regex", "window"})

DEFAULT_MANIFESTS = ("*.yml", "*.yaml")



def counted(series: str, by: str = "") -> str:
    """PromQL for what a counter added over the look's {{ window }}, exactly: each series'
    rise (a reset counts as none), or its whole value for a series that began within the
    window. Unlike increase(), nothing is extrapolated to the window's edges, so the looks'
    counts add up to the requests served, and series of pods gone before the window (an
    earlier canary's) never count. `by`: e.g. " by (le)" for histogram buckets."""
    before = f"{series} offset {{{{ window }}}}"
    head = f"sum{by} " if by else "sum"
    return f"{head}(clamp_min({series} - {before}, 0) or ({series} unless {before}))"


# The seed guide's success rate: good responses over all responses, per variant.
_SEED_SELECTOR = 'namespace="{{ namespace }}", pod=~"{{ pod_regex }}"'
DEFAULT_GOOD = counted(f'requests_total{{{_SEED_SELECTOR}, custom_status="good"}}')
DEFAULT_TOTAL = counted(f"requests_total{{{_SEED_SELECTOR}}}")


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "ratio" (good/total counts), "histogram" (bucket counts) or "samples" (values)
    direction: str  # the way the metric is better: "higher", "lower" or "either"
    query: str = ""  # samples: one value per variant; histogram: counts `by (le)`
    good: str = ""  # ratio: PromQL for the good count over {{ window }}
    total: str = ""  # ratio: PromQL for the total count over {{ window }}
    critical: bool = False
    weight: float = 1.0
    tolerance: float | None = None  # None: the kind's default (sequential.DEFAULT_TOLERANCE)
    objective: float | None = None  # histogram: seconds; faster requests are good


@dataclass(frozen=True)
class Analysis:
    warmup: int = 60
    interval: int = 30
    window: int = 120  # read for older files, unused: a look covers the time since the last
    deadline: int = 1800
    pass_score: float = 95.0
    marginal_score: float = 75.0
    metrics: tuple[Metric, ...] = (
        Metric(name="success-rate", kind="ratio", direction="higher", good=DEFAULT_GOOD,
               total=DEFAULT_TOTAL, critical=True),
    )


@dataclass(frozen=True)
class Helm:
    """How a folder holding a Chart.yaml is rendered: `helm template <release> <folder>`."""

    release: str
    values_files: tuple[str, ...] = ()  # relative to the folder, in order
    values: dict[str, Any] | None = None  # last, over the files (written as a values file)


@dataclass(frozen=True)
class Policy:
    app: str
    namespace: str = "default"
    percentage: float = 25.0
    bootstrap: str = "canary"
    manifests: tuple[str, ...] = DEFAULT_MANIFESTS
    promote: str | None = None
    judgment: str = "manual"
    approvers: tuple[str, ...] = ()
    require_signed_approval: bool = False
    analysis: Analysis = field(default_factory=Analysis)
    helm: Helm | None = None  # None: the chart's release is the app, with its own values
    direct: frozenset[str] = frozenset()  # workloads applied as written, never canaried
    stateful: frozenset[str] = frozenset()  # workloads whose variants may share state (opt-in)
    adopt: bool = False  # take over live objects no other app owns (kubectl, Flux, Argo CD)
    ready_timeout: int = 600  # seconds for baseline and canary to become ready, or a failure
    prune: bool = True  # delete what the app applied and git no longer has
    drift: str = "correct"  # stable changed by hand: "correct" it to git, or only "report" it

    @property
    def governance(self) -> tuple[object, ...]:
        """Who may judge, and how: changing it is itself a change that needs approval by the
        policy stable runs. Empty when nothing is set, so the default changes no fingerprint."""
        if not (self.approvers or self.require_signed_approval or self.judgment != "manual"):
            return ()
        return (sorted(a.lower() for a in self.approvers), self.require_signed_approval,
                self.judgment)


class _Fields:
    """Reads a YAML mapping field by field and complains about what is left over."""

    def __init__(self, file: str, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise InputError(file, path or "(top level)", f"must be a mapping, got {_kind(data)}")
        self.file, self.data, self.path = file, dict(data), path

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str) -> InputError:
        return InputError(self.file, self._where(key), problem)

    def take(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if value is None:
            return default
        # bool is an int in Python; a YAML `true` is never a number here.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(key, f"must be {_names(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.fail(key, f"must be {_names(kind)}, got {_kind(value)}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value: str = self.take(key, str, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def duration(self, key: str, default: int) -> int:
        value = self.take(key, (str, int), default)
        if isinstance(value, int):
            seconds = value
        else:
            match = DURATION.match(value.strip())
            if not match or not any(match.groups()):
                raise self.fail(key, f"must be a duration like 30s, 5m or 1h30m; got {value!r}")
            hours, minutes, secs = (int(g or 0) for g in match.groups())
            seconds = hours * 3600 + minutes * 60 + secs
        if seconds <= 0:
            raise self.fail(key, "must be positive")
        return seconds

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        values = self.take(key, list, None)
        if values is None:
            return default
        for i, value in enumerate(values):
            if not isinstance(value, str) or not value:
                raise InputError(self.file, f"{self._where(key)}[{i}]",
                                 "must be a non-empty string")
        return tuple(values)

    def done(self, known: tuple[str, ...]) -> None:
        if self.data:
            first = sorted(str(k) for k in self.data)[0]
            raise self.fail(first, f"unknown field (known here: {', '.join(known)})")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", int: "a number",
            float: "a number", bool: "a boolean", type(None): "nothing"}.get(type(value),
                                                                               type(value).__name__)


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {dict: "a mapping", list: "a list", str: "a string", int: "a number",
             float: "a number", bool: "true or false"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def check_template(file: str, where: str, template: str) -> None:
    """Reject `{{ x }}` for any x that is not a known template variable."""
    for name in TEMPLATE_VARIABLE.findall(template):
        if name not in TEMPLATE_VARIABLES:
            known = ", ".join(sorted(TEMPLATE_VARIABLES))
            raise InputError(file, where, f"unknown template variable {{{{ {name} }}}}; "
                                          f"known: {known}")


def _metric(file: str, data: Any, path: str) -> Metric:
    fields = _Fields(file, data, path)
    name = fields.take("name", str)
    if not name:
        raise fields.fail("name", "is required")
    kind = fields.choice("kind", ("ratio", "histogram", "samples"), "ratio")
    direction = fields.choice("direction", ("higher", "lower", "either"),
                              "lower" if kind == "histogram" else "higher")
    if kind == "histogram" and direction != "lower":
        raise fields.fail("direction", "a histogram measures latency: lower is better")
    query, good, total = fields.take("query", str, ""), fields.take("good", str, ""), \
        fields.take("total", str, "")
    if kind == "ratio" and not (good and total):
        raise fields.fail("good" if not good else "total", "a ratio metric needs both good and "
                                                          "total queries")
    if kind in ("samples", "histogram") and not query:
        raise fields.fail("query", f"a {kind} metric needs a query")
    if kind != "ratio" and (good or total):
        raise fields.fail("good" if good else "total", "only a ratio metric has good and total "
                                                       "queries")
    objective = fields.take("objective", (int, float), None)
    if kind == "histogram" and (objective is None or not 0 < objective < float("inf")):
        raise fields.fail("objective", "a histogram metric needs its latency objective in "
                                       "seconds: one of the histogram's bucket bounds, e.g. 0.25")
    if kind != "histogram" and objective is not None:
        raise fields.fail("objective", "only a histogram metric has an objective")
    for key, template in (("query", query), ("good", good), ("total", total)):
        check_template(file, f"{path}.{key}", template)
    weight = float(fields.take("weight", (int, float), 1.0))
    tolerance = fields.take("tolerance", (int, float), None)
    if weight <= 0:
        raise fields.fail("weight", "must be positive")
    if tolerance is not None and tolerance < 0:
        raise fields.fail("tolerance", "must not be negative")
    metric = Metric(name=name, kind=kind, direction=direction, query=query, good=good,
                    total=total, critical=fields.take("critical", bool, False), weight=weight,
                    tolerance=None if tolerance is None else float(tolerance),
                    objective=None if objective is None else float(objective))
    fields.done(("name", "kind", "direction", "query", "good", "total", "critical", "weight",
                 "tolerance", "objective"))
    return metric


def _analysis(file: str, data: Any) -> Analysis:
    if data is None:
        return Analysis()
    fields = _Fields(file, data, "analysis")
    defaults = Analysis()
    thresholds = _Fields(file, fields.take("thresholds", dict, {}), "analysis.thresholds")
    pass_score = float(thresholds.take("pass", (int, float), defaults.pass_score))
    marginal_score = float(thresholds.take("marginal", (int, float), defaults.marginal_score))
    thresholds.done(("pass", "marginal"))
    if not 0 <= marginal_score <= pass_score <= 100:
        raise InputError(file, "analysis.thresholds",
                         f"need 0 <= marginal ({marginal_score:g}) <= pass ({pass_score:g}) <= 100")
    raw_metrics = fields.take("metrics", list, None)
    metrics = defaults.metrics if raw_metrics is None else tuple(
        _metric(file, m, f"analysis.metrics[{i}]") for i, m in enumerate(raw_metrics))
    if not metrics:
        raise fields.fail("metrics", "needs at least one metric (or leave it out for the default)")
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise fields.fail("metrics", f"metric names must be unique: {names}")
    analysis = Analysis(
        warmup=fields.duration("warmup", defaults.warmup),
        interval=fields.duration("interval", defaults.interval),
        window=fields.duration("window", defaults.window),
        deadline=fields.duration("deadline", defaults.deadline),
        pass_score=pass_score,
        marginal_score=marginal_score,
        metrics=metrics,
    )
    fields.done(("warmup", "interval", "window", "deadline", "thresholds", "metrics"))
    return analysis


def _workloads(file: str, data: Any) -> tuple[frozenset[str], frozenset[str]]:
    """`workloads: {redis: {canary: false}, db: {stateful: true}}`: the workloads applied as
    written, with stable, never given a baseline and a canary (a datastore, say); and those
    whose variants may share a ReadWriteOnce claim or join a headless Service's cluster."""
    if data is None:
        return frozenset(), frozenset()
    direct, stateful = set(), set()
    for name, settings in data.items():
        fields = _Fields(file, settings, f"workloads.{name}")
        if not fields.take("canary", bool, True):
            direct.add(str(name))
        if fields.take("stateful", bool, False):
            stateful.add(str(name))
        fields.done(("canary", "stateful"))
    return frozenset(direct), frozenset(stateful)


def _helm(file: str, data: Any, app: str) -> Helm | None:
    if data is None:
        return None
    fields = _Fields(file, data, "helm")
    release = fields.take("releaseName", str, app)
    if not DNS_LABEL.match(release):
        raise fields.fail("releaseName", f"must be a DNS label; got {release!r}")
    files = fields.strings("valuesFiles", ())
    for i, name in enumerate(files):
        if name.startswith("/") or ".." in name.split("/"):
            raise InputError(file, f"helm.valuesFiles[{i}]",
                             f"must stay inside the app folder; got {name!r}")
    values = fields.take("values", dict, None)
    fields.done(("releaseName", "valuesFiles", "values"))
    return Helm(release, files, values)


def parse_policy(text: str, file: str, folder_name: str) -> Policy:
    """Parse the text of a canary.yaml; `folder_name` names the app when `app:` is absent."""
    documents = load_yaml(text, file)  # bounded: no aliases, no deep nesting, at most 1 MiB
    if len(documents) > 1:
        raise InputError(file, "", f"invalid YAML: expected a single document, found "
                                   f"{len(documents)}")
    data = documents[0] if documents else None
    fields = _Fields(file, {} if data is None else data, "")
    app = fields.take("app", str, folder_name)
    if not DNS_LABEL.match(app):
        raise fields.fail("app", f"must be a DNS label (lower-case letters, digits, '-'); "
                                 f"got {app!r}")
    namespace = fields.take("namespace", str, "default")
    if not DNS_LABEL.match(namespace):
        raise fields.fail("namespace", f"must be a DNS label; got {namespace!r}")
    percentage = float(fields.take("percentage", (int, float), 25))
    if not 0 < percentage <= 100:
        raise fields.fail("percentage", f"must be in (0, 100]; got {percentage:g}")
    manifests = fields.strings("manifests", DEFAULT_MANIFESTS)
    for i, pattern in enumerate(manifests):
        if pattern.startswith("/") or ".." in pattern.split("/"):
            raise InputError(file, f"manifests[{i}]",
                             f"must stay inside the app folder; got {pattern!r}")
    if isinstance(fields.data.get("promote"), int):
        # YAML reads an all-digit sha as a number (and 0123456 as octal): ask for quotes.
        raise fields.fail("promote", "must be a quoted string: YAML read this sha as a number")
    promote = fields.take("promote", str, None)
    if promote is not None:
        promote = promote.strip().lower()
        if not FULL_SHA.match(promote):
            # A prefix can be brute-forced to match a later commit: only the full hash names
            # exactly one canary (what `gitops-canary promote` and promote requests write).
            raise fields.fail("promote", f"must be the full commit sha (40 hex characters) of "
                                         f"the canary revision; got {promote!r}")
    approvers = fields.strings("approvers", ())
    helm = _helm(file, fields.take("helm", dict, None), app)
    direct, stateful = _workloads(file, fields.take("workloads", dict, None))
    policy = Policy(
        app=app,
        namespace=namespace,
        percentage=percentage,
        bootstrap=fields.choice("bootstrap", ("canary", "direct"), "canary"),
        manifests=manifests,
        promote=promote,
        judgment=fields.choice("judgment", ("manual", "auto"), "manual"),
        approvers=approvers,
        require_signed_approval=fields.take("requireSignedApproval", bool, False),
        analysis=_analysis(file, fields.take("analysis", dict, None)),
        helm=helm,
        direct=direct,
        stateful=stateful,
        adopt=fields.take("adopt", bool, False),
        ready_timeout=fields.duration("readyTimeout", 600),
        prune=fields.take("prune", bool, True),
        drift=fields.choice("drift", ("correct", "report"), "correct"),
    )
    fields.done(("app", "namespace", "percentage", "bootstrap", "manifests", "promote",
                 "judgment", "approvers", "requireSignedApproval", "analysis", "helm",
                 "workloads", "adopt", "readyTimeout", "prune", "drift"))
    return policy


def with_approval(text: str, revision: str) -> str:
    """The canary.yaml text with `promote: "<revision>"`, replacing any earlier approval and
    keeping everything else (comments included) as it was."""
    line = f'promote: "{revision}"'
    if re.search(r"(?m)^promote:.*$", text):
        return re.sub(r"(?m)^promote:.*$", line, text)
    return text.rstrip("\n") + ("\n" if text.strip() else "") + line + "\n"
