"""The `gitops-canary` command line: the product's public surface (SPEC §6).

run      the controller: git → cluster, statuses as git notes
render   print what would be applied for an app folder (no cluster writes)
status   per app: phase, stable and canary revisions, last status
analyze  run one baseline-vs-canary analysis of an app now and print it
judge    judge saved metric data offline (JSON), so anyone can reproduce a verdict
promote  prepare the approval commit (`promote: <sha>` in canary.yaml) in a local clone
reject   prepare the revert commit of the canary in a local clone
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from controller import __version__
from controller.domain.policy import (
    POLICY_FILE,
    parse_policy,
    with_approval,
)
from controller.domain.render import key_of, planned_objects
from controller.domain.types import WORKLOAD_KINDS, AppName, KubeObject, Sha
from controller.errors import CanaryError

# The command line starts fast: what only some commands need (scipy for the judge, the
# Kubernetes client, httpx, prometheus_client, watchdog, git) is imported by those commands.
if TYPE_CHECKING:
    from controller.approvals import ForgeApprovers
    from controller.apps import AppReader
    from controller.edges.git import GitRepo, GitSource
    from controller.edges.prometheus import Prometheus
    from controller.edges.statuses import StatusSink
    from controller.promotions import PromotionRequests

log = logging.getLogger("gitops-canary")

DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def duration(text: str) -> float:
    match = DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 500ms, 30s, 5m)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def _secret(file: str | None, env: str) -> str | None:
    """A secret from a file (preferred) or an environment variable; never from a flag."""
    if file:
        return Path(file).read_text().strip()
    return os.environ.get(env) or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gitops-canary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gitops-canary {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("GITOPS_CANARY_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    kube = argparse.ArgumentParser(add_help=False)
    kube.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                      help="kubeconfig file (default: $KUBECONFIG, else in-cluster)")
    kube.add_argument("--state-namespace",
                      default=os.environ.get("GITOPS_CANARY_STATE_NAMESPACE", "gitops-canary"),
                      help="namespace of the per-app records (default: %(default)s)")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--output", "-o", choices=("text", "json", "yaml"), default="text")

    tools = argparse.ArgumentParser(add_help=False)
    tools.add_argument("--kustomize", default=os.environ.get("GITOPS_CANARY_KUSTOMIZE"),
                       metavar="PATH", help="kustomize binary (default: kustomize on PATH)")
    tools.add_argument("--helm", default=os.environ.get("GITOPS_CANARY_HELM"), metavar="PATH",
                       help="helm binary (default: helm on PATH)")

    prometheus = argparse.ArgumentParser(add_help=False)
    prometheus.add_argument("--prometheus-url", default=os.environ.get("GITOPS_CANARY_PROMETHEUS"),
                            help="Prometheus base URL (run: without it, no analysis)")
    prometheus.add_argument("--prometheus-token-file", default=None,
                            help="file holding a bearer token for Prometheus")
    prometheus.add_argument("--prometheus-basic-auth-file", default=None,
                            help="file holding USER:PASSWORD for Prometheus")

    run = sub.add_parser("run", parents=[kube, prometheus, tools], help="run the controller")
    run.add_argument("--repo", default=os.environ.get("GITOPS_CANARY_REPO"), required=
                     "GITOPS_CANARY_REPO" not in os.environ,
                     help="deploy repository: path, file://, https:// or ssh:// URL")
    run.add_argument("--branch", default=os.environ.get("GITOPS_CANARY_BRANCH", "main"))
    run.add_argument("--interval", type=duration,
                     default=duration(os.environ.get("GITOPS_CANARY_INTERVAL", "30s")),
                     help="poll interval (default 30s); local paths also wake on new commits")
    run.add_argument("--workdir", type=Path, default=None,
                     help="folder of the controller's git mirror (default: under ~/.cache)")
    run.add_argument("--prune", choices=("true", "false"),
                     default=os.environ.get("GITOPS_CANARY_PRUNE", "true"),
                     help="delete what an app applied once git no longer has it, and an app "
                          "whose folder left git (default: %(default)s; per app: prune: false)")
    run.add_argument("--resync", type=duration,
                     default=duration(os.environ.get("GITOPS_CANARY_RESYNC", "5m")),
                     help="compare every app with the cluster at least this often, ±10%% "
                          "(default 5m): drift is corrected (per app: drift: report)")
    run.add_argument("--watch", choices=("true", "false"),
                     default=os.environ.get("GITOPS_CANARY_WATCH", "true"),
                     help="watch the records and the labelled objects (list and watch): "
                          "reads come from the watched copy, and a change someone else makes "
                          "is compared with git at once (default: %(default)s; false: every "
                          "read is a request, drift waits for --resync)")
    run.add_argument("--workers", type=int, default=None,
                     help="apps reconciled at once (default: 4 per core, at most 8); one app "
                          "is never reconciled twice at once")
    run.add_argument("--analysis-workers", type=int, default=32,
                     help="Prometheus queries in flight at once, across all apps (default 32): "
                          "looks run in the background, so a slow Prometheus holds no app")
    run.add_argument("--namespaces", default=os.environ.get("GITOPS_CANARY_NAMESPACES"),
                     help="comma-separated namespaces apps may use (default: all)")
    run.add_argument("--allow-cluster-kind", action="append", default=[], metavar="KIND",
                     help="a cluster-scoped kind apps may apply (repeatable; default: none)")
    run.add_argument("--git-token-file", default=None,
                     help="file holding an HTTPS token for the repository "
                          "(or $GITOPS_CANARY_GIT_TOKEN)")
    run.add_argument("--git-username", default=os.environ.get("GITOPS_CANARY_GIT_USERNAME", "git"),
                     help="user name sent with the token (some forges want the token's owner)")
    run.add_argument("--once", action="store_true", help="reconcile once and exit")
    run.add_argument("--webhook-secret-file", default=None,
                     help="file holding the push webhooks' secret (or "
                          "$GITOPS_CANARY_WEBHOOK_SECRET); POST /webhook on --metrics-address")
    run.add_argument("--forge", choices=("notes", "gitea", "forgejo", "github", "gitlab"),
                     default=os.environ.get("GITOPS_CANARY_FORGE", "notes"),
                     help="where commit statuses go (default: git notes, any git server)")
    run.add_argument("--forge-url", default=os.environ.get("GITOPS_CANARY_FORGE_URL"),
                     help="the forge's base URL, e.g. https://gitea.example.com")
    run.add_argument("--forge-repo", default=os.environ.get("GITOPS_CANARY_FORGE_REPO"),
                     help="owner/name (GitLab: the project id or path)")
    run.add_argument("--forge-token-file", default=None,
                     help="file holding the forge's API token (or $GITOPS_CANARY_FORGE_TOKEN)")
    run.add_argument("--promote-pr", choices=("off", "pass", "always"),
                     default=os.environ.get("GITOPS_CANARY_PROMOTE_PR", "pass"),
                     help="with a forge: open a promote pull request when the analysis passes "
                          "(default), also when it fails (always), or never (off)")
    run.add_argument("--allowed-signers", type=Path, default=None,
                     help="SSH allowed-signers file: the keys whose signed approvals count "
                          "for apps with requireSignedApproval")
    run.add_argument("--commit-author", default="gitops-canary <gitops-canary@localhost>",
                     help="NAME <EMAIL> of the controller's own commits (promote requests, "
                          "judgment: auto)")
    run.add_argument("--status-target-url", default="",
                     help="a link for each status; {app}, {sha} and {context} are filled in")
    run.add_argument("--metrics-address",
                     default=os.environ.get("GITOPS_CANARY_METRICS_ADDRESS", "127.0.0.1:8088"),
                     help="HOST:PORT of /metrics, /healthz and /readyz (empty: off)")
    run.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=True,
                     help="reconcile only while holding the Lease gitops-canary-leader in "
                          "--state-namespace, so replicas can stand by (default: on; --once "
                          "never elects)")
    run.add_argument("--identity", default=None,
                     help="this replica's name in the Lease (default: $POD_NAME, else "
                          "HOSTNAME-PID)")
    run.add_argument("--lease-duration", type=duration, default=15.0,
                     help="how long a Lease nobody renews blocks the others (default 15s)")
    run.add_argument("--lease-renew", type=duration, default=5.0,
                     help="how often the leader renews, and the others look (default 5s; at "
                          "most half of --lease-duration)")

    analyze = sub.add_parser("analyze", parents=[prometheus, output, tools],
                             help="one analysis of APP's canary, now")
    analyze.add_argument("app", metavar="APP")
    analyze.add_argument("--repo", type=Path, default=Path.cwd(),
                         help="a local clone of the deploy repository (default: here)")
    analyze.add_argument("--window", type=int, default=600, metavar="SECONDS",
                         help="judge what the variants served in the last SECONDS, as one "
                              "look (default 600)")

    replay = sub.add_parser("replay", parents=[output],
                            help="re-run the controller's decision on a recorded analysis "
                                 "(JSON; `status APP --series` prints one), no cluster")
    replay.add_argument("--input", required=True, metavar="FILE", help="JSON file, - for stdin")

    judge = sub.add_parser("judge", help="judge saved metric data (JSON) offline: one "
                                         "fixed sample, Fisher / Mann-Whitney (no looks)")
    judge.add_argument("--input", required=True, metavar="FILE", help="JSON file, - for stdin")

    render = sub.add_parser("render", parents=[tools], help="print the objects to apply")
    render.add_argument("--output", "-o", choices=("yaml", "json"), default="yaml")
    render.add_argument("app_dir", type=Path, metavar="APP_DIR")
    render.add_argument("--live", type=Path, metavar="FILE",
                        help="YAML stream of the live stable objects (absent: first deployment)")

    status = sub.add_parser("status", parents=[kube, output],
                            help="show every app's phase and status")
    status.add_argument("app", metavar="APP", nargs="?", help="only this app")
    status.add_argument("--series", action="store_true",
                        help="print APP's analysis evidence, every look, as `replay` input")

    for name, text in (("promote", "commit the approval of APP's canary in a local clone"),
                       ("reject", "commit the return of APP to stable in a local clone (with "
                                  "--kubeconfig: to stable's revision; else: revert the "
                                  "canary's commit)")):
        cmd = sub.add_parser(name, parents=[kube, tools], help=text)
        cmd.add_argument("app", metavar="APP")
        cmd.add_argument("--repo", type=Path, default=Path.cwd(),
                         help="the local clone (default: the current folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        handler = {"run": _run, "render": _render, "status": _status, "promote": _promote,
                   "reject": _reject, "analyze": _analyze, "judge": _judge,
                   "replay": _replay}[args.command]
        return handler(args)
    except CanaryError as error:
        print(f"gitops-canary {args.command}: {error}", file=sys.stderr)
        return 2


def _emit(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump_all(data if isinstance(data, list) else [data], sort_keys=False),
              end="")


# --- run ----------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from controller.edges.git import GitSource
    from controller.edges.kube import Kube, connect
    from controller.edges.renderers import Tools
    from controller.leader import Elector, default_identity, elected
    from controller.metrics import Metrics, serve
    from controller.reconcile import Reconciler
    from controller.run import loop

    if args.workers is not None and args.workers < 1:
        raise CanaryError(f"--workers must be at least 1; got {args.workers}")
    if args.analysis_workers < 1:
        raise CanaryError(f"--analysis-workers must be at least 1; got {args.analysis_workers}")
    if args.leader_election and not 0 < 2 * args.lease_renew <= args.lease_duration:
        raise CanaryError(f"--lease-renew ({args.lease_renew:g}s) must be at most half of "
                          f"--lease-duration ({args.lease_duration:g}s)")
    url: str = args.repo
    workdir = args.workdir or Path.home() / ".cache" / "gitops-canary" / "mirrors" / \
        hashlib.sha256(f"{url}#{args.branch}".encode()).hexdigest()[:16]
    token = _secret(args.git_token_file, "GITOPS_CANARY_GIT_TOKEN")
    source = GitSource(url, args.branch, workdir, token, args.git_username)
    name, _, email = args.commit_author.partition("<")
    source.author = {key: value for kind in ("AUTHOR", "COMMITTER")
                     for key, value in ((f"GIT_{kind}_NAME", name.strip()),
                                        (f"GIT_{kind}_EMAIL", email.rstrip("> ").strip()))}
    namespaces = frozenset(n.strip() for n in args.namespaces.split(",") if n.strip()) \
        if args.namespaces else None
    api = connect(args.kubeconfig)
    kube = Kube(api, namespaces, frozenset(args.allow_cluster_kind), args.state_namespace)
    sink, promotions, forge_approvers = _forge(args, source)
    reconciler = Reconciler(source, kube, sink, _prometheus(args), promotions=promotions,
                            tools=Tools.found(args.kustomize, args.helm),
                            prune=args.prune == "true", resync=args.resync,
                            analysis_workers=args.analysis_workers,
                            **({"workers": args.workers} if args.workers else {}),
                            propose_on_failure=args.promote_pr == "always",
                            allowed_signers=args.allowed_signers,
                            forge_approvers=forge_approvers)
    if args.watch == "true" and not args.once:  # one reconcile has no use for a copy
        kube.watch(on_change=reconciler.changed)
    if reconciler.prometheus is None:
        log.warning("no --prometheus-url: canaries wait for a person's judgment, unanalysed")
    if args.once:
        result = reconciler.reconcile()
        return 1 if result.error else 0
    stop, wake = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    metrics = Metrics()
    metrics.watches = kube.watches
    secret = _secret(args.webhook_secret_file, "GITOPS_CANARY_WEBHOOK_SECRET")
    push = _Push(wake)
    server = serve(metrics, args.metrics_address, args.interval, on_push=push,
                   webhook_secret=secret) if args.metrics_address else None
    log.info("watching %s (branch %s) every %.0fs", source.url, args.branch, args.interval)
    try:
        if not args.leader_election:
            loop(reconciler, args.interval, stop, wake=wake, metrics=metrics)
        else:
            elector = Elector(api, args.state_namespace, args.identity or default_identity(),
                              duration=args.lease_duration, renew=args.lease_renew)
            log.info("leader election: candidate %s for Lease %s/%s", elector.identity,
                     elector.namespace, elector.name)
            # The Lease is released only after the loop's last reconcile has returned.
            with elected(elector, on_elected=wake.set) as leading:
                push.leading = leading
                loop(reconciler, args.interval, stop, wake=wake, metrics=metrics,
                     leading=leading)
    finally:
        if server is not None:
            server.shutdown()
        kube.close()
    log.info("stopped")
    return 0


class _Push:
    """A genuine push webhook wakes the loop; a standby refuses it: only the leader acts."""

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self.leading: Callable[[], bool] = lambda: True

    def __call__(self) -> bool:
        if not self.leading():
            return False
        self.wake.set()
        return True


def _forge(args: argparse.Namespace, source: GitSource
           ) -> tuple[StatusSink, PromotionRequests | None, ForgeApprovers | None]:
    from controller.edges.statuses import GitNotesSink

    if args.forge == "notes":
        return GitNotesSink(source), None, None
    token = _secret(args.forge_token_file, "GITOPS_CANARY_FORGE_TOKEN")
    if not (args.forge_url and args.forge_repo and token):
        raise CanaryError(f"--forge {args.forge} needs --forge-url, --forge-repo and a token "
                          f"(--forge-token-file or $GITOPS_CANARY_FORGE_TOKEN)")
    import httpx

    from controller.edges.forges import ForgeStatusSink, auth_headers, make_forge
    from controller.promotions import PromotionRequests

    client = httpx.Client(base_url=args.forge_url.rstrip("/"), timeout=10.0,
                          headers=auth_headers(args.forge, token))
    forge = make_forge(args.forge, args.forge_repo)
    promotions = None if args.promote_pr == "off" else PromotionRequests(forge, client, source)

    def approvers(commit: Sha) -> frozenset[str]:
        """Who merged, or approved in review, the pull request merged as `commit`."""
        approval = forge.approval_of(client, commit)
        return frozenset() if approval is None else approval.identities

    return ForgeStatusSink(forge, client, args.status_target_url), promotions, approvers


def _prometheus(args: argparse.Namespace) -> Prometheus | None:
    if not args.prometheus_url:
        return None
    from controller.edges.prometheus import Auth, Prometheus

    auth = Auth(bearer=_secret(args.prometheus_token_file, "GITOPS_CANARY_PROMETHEUS_TOKEN"))
    basic = _secret(args.prometheus_basic_auth_file, "GITOPS_CANARY_PROMETHEUS_BASIC_AUTH")
    if basic:
        user, _, password = basic.partition(":")
        auth = Auth(basic=(user, password))
    return Prometheus(args.prometheus_url, auth=auth)


# --- analyze / judge ----------------------------------------------------------------------


def _analyze(args: argparse.Namespace) -> int:
    from controller.analysis import analyze
    from controller.apps import AppReader
    from controller.domain.sequential import describe, summary, to_json
    from controller.edges.git import GitRepo
    from controller.edges.renderers import Tools

    prom = _prometheus(args)
    if prom is None:
        raise CanaryError("analyze needs --prometheus-url (or $GITOPS_CANARY_PROMETHEUS)")
    repo = GitRepo.open(args.repo)
    head = Sha(repo.repo.head.commit.hexsha)
    reader = AppReader(repo, Tools.found(args.kustomize, args.helm))
    desired = reader.desired(head, reader.find(head, args.app))
    workloads = [(m.kind, m.name) for m in desired.manifests if m.kind in WORKLOAD_KINDS]
    now = time.time()
    assessment = analyze(prom, desired.policy, workloads, now - args.window, now)
    if args.output == "text":
        print(summary(assessment))
        for m in assessment.metrics:
            print(f"  {m.name}: {m.result}: {describe(m)}")
    else:
        _emit(to_json(assessment), args.output)
    return 0


def _json_input(where: str, command: str) -> tuple[str | None, Any]:
    """(source name, data) of a JSON file or stdin (-); (None, None) after saying why not."""
    source = "stdin" if where == "-" else where
    try:
        text = sys.stdin.read() if where == "-" else Path(where).read_text()
        return source, json.loads(text)
    except (OSError, ValueError) as error:
        print(f"gitops-canary {command}: {source}: {error}", file=sys.stderr)
        return None, None


def _replay(args: argparse.Namespace) -> int:
    """A document or an array of them; the output follows the input's shape."""
    from controller.domain.replay import parse, replay

    source, data = _json_input(args.input, "replay")
    if source is None:
        return 2
    many = isinstance(data, list)
    try:
        recorded = [parse(item, f"{source}[{i}]" if many else source)
                    for i, item in enumerate(data if many else [data])]
    except CanaryError as error:
        print(f"gitops-canary replay: {error}", file=sys.stderr)
        return 2
    results = [replay(r) for r in recorded]
    if args.output == "text":
        for result in results:
            at = result["decided_at"]
            print(f"{result['verdict']} after {result['looks']} look(s)"
                  f"{'' if at is None else f' at {at}s'}: {result['summary']}")
    else:
        _emit(results if many else results[0], args.output)
    return 0


def _judge(args: argparse.Namespace) -> int:
    from controller.domain.judge import judge, parse_input, to_json

    source, data = _json_input(args.input, "judge")
    if source is None:
        return 2
    try:
        metrics, pass_score, marginal_score = parse_input(data, source)
    except CanaryError as error:
        print(f"gitops-canary judge: {error}", file=sys.stderr)
        return 2
    print(json.dumps(to_json(judge(metrics, pass_score, marginal_score)), indent=2))
    return 0


# --- render -------------------------------------------------------------------------------


def _render(args: argparse.Namespace) -> int:
    from controller.apps import on_disk
    from controller.edges.renderers import Tools

    folder: Path = args.app_dir
    policy_file = folder / POLICY_FILE
    if not policy_file.exists():
        print(f"gitops-canary render: {policy_file}: not found (an app folder holds "
              f"{POLICY_FILE})", file=sys.stderr)
        return 2
    policy = parse_policy(policy_file.read_text(), str(policy_file), folder.resolve().name)
    manifests = on_disk(folder, policy, Tools.found(args.kustomize, args.helm))
    live: dict[tuple[str, str, str], KubeObject] = {}
    if args.live:
        try:
            documents = list(yaml.safe_load_all(args.live.read_text()))
        except yaml.YAMLError as error:
            print(f"gitops-canary render: {args.live}: invalid YAML: {error}", file=sys.stderr)
            return 2
        for obj in documents:
            if isinstance(obj, dict) and obj.get("kind"):
                obj.setdefault("metadata", {}).setdefault("namespace", policy.namespace)
                live[key_of(obj)] = obj
    _emit(planned_objects(policy, manifests, live), args.output)
    return 0


# --- status -------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    from controller.edges.kube import Kube, connect

    kube = Kube(connect(args.kubeconfig), state_namespace=args.state_namespace)
    records = kube.records(quarantine=False)
    if args.app and args.app not in records:
        raise CanaryError(f"no app {args.app!r} in {args.state_namespace} (known: "
                          f"{', '.join(sorted(records)) or 'none'})")
    if args.series:
        if not args.app:
            raise CanaryError("--series needs an APP")
        evidence = records[args.app].evidence
        if not evidence:
            raise CanaryError(f"{args.app}: no analysis recorded (the current or last canary "
                              f"was not analysed)")
        print(json.dumps(json.loads(evidence), indent=2))
        return 0
    rows: list[dict[str, Any]] = []
    for app, record in sorted(records.items()):
        if args.app and app != args.app:
            continue
        status = record.last_status
        rows.append({
            "app": app,
            "phase": str(record.phase),
            "stable_revision": record.stable_revision,
            "canary_revision": record.canary_revision,
            "error": record.error,
            "last_status": None if status is None else {
                "sha": status.sha, "state": str(status.state),
                "description": status.description},
        })
    if args.output in ("json", "yaml"):
        _emit(rows, args.output)
        return 0
    print(f"{'APP':<20} {'PHASE':<18} {'STABLE':<8} {'CANARY':<8} LAST STATUS")
    for row in rows:
        last = row["last_status"]
        print(f"{row['app']:<20} {row['phase']:<18} {(row['stable_revision'] or '-')[:7]:<8} "
              f"{(row['canary_revision'] or '-')[:7]:<8} "
              f"{last['state'] + ': ' + last['description'] if last else '-'}")
    return 0


# --- promote / reject ---------------------------------------------------------------------


def _canary_of(args: argparse.Namespace) -> tuple[GitRepo, AppReader, Path, Sha]:
    from controller.apps import AppReader
    from controller.edges.git import GitRepo
    from controller.edges.renderers import Tools

    repo = GitRepo.open(args.repo)
    if repo.repo.is_dirty(untracked_files=False):
        raise CanaryError(f"{repo.repo.working_dir} has uncommitted changes; commit or stash "
                          f"them first")
    head = Sha(repo.repo.head.commit.hexsha)
    reader = AppReader(repo, Tools.found(args.kustomize, args.helm))
    folder = reader.find(head, args.app)
    desired = reader.desired(head, folder)
    return repo, reader, Path(str(repo.repo.working_dir)) / folder.path / POLICY_FILE, \
        desired.revision


def _promote(args: argparse.Namespace) -> int:
    repo, _, policy_path, revision = _canary_of(args)
    policy_path.write_text(with_approval(policy_path.read_text(), revision))
    repo.repo.index.add([str(policy_path)])
    commit = repo.repo.index.commit(f"Promote {args.app} canary {revision[:7]}\n\n"
                                    f"Approves the canary of {revision} (gitops-canary).")
    print(f"committed {commit.hexsha[:7]}: promote {args.app} canary {revision[:7]}; "
          f"push it (or open a pull request) to promote")
    return 0


def _reject(args: argparse.Namespace) -> int:
    repo, _, policy_path, revision = _canary_of(args)
    record = None
    if args.kubeconfig:
        from controller.edges.kube import Kube, connect

        kube = Kube(connect(args.kubeconfig), state_namespace=args.state_namespace)
        record = kube.records(quarantine=False).get(AppName(args.app))
        if record is not None and record.canary_revision is None:
            raise CanaryError(f"no canary of {args.app} is running (phase {record.phase}): "
                              f"nothing to reject")
    if record is not None and record.stable_revision is not None:
        return _restore_stable(repo, policy_path, args.app, record.stable_revision, revision)
    # Without the cluster's record, the revert of the canary's commit is the best guess.
    try:
        repo.repo.git.revert("--no-edit", revision)
    except Exception as error:  # git's own message says what conflicted
        repo.repo.git.revert("--abort")
        raise CanaryError(f"git revert {revision[:7]} failed: {error}") from None
    print(f"committed {repo.repo.head.commit.hexsha[:7]}: revert of {revision[:7]}; push it "
          f"(or open a pull request) to reject the {args.app} canary")
    return 0


def _restore_stable(repo: GitRepo, policy_path: Path, app: str, stable: Sha,
                    canary: Sha) -> int:
    """Put the app's folder back as it was at stable's revision, but for its canary.yaml (the
    approvals and settings stay): git then equals stable, however many commits the canary took,
    and the controller deletes the variants. The deploy repository is untrusted: the canary may
    have made a file or a folder a symlink to ~/.ssh, so no Python write goes through the work
    tree; the commit is made of git objects and git's own checkout puts it in the work tree."""
    relative = policy_path.parent.relative_to(Path(str(repo.repo.working_dir))).as_posix()
    folder = "" if relative == "." else relative
    head = Sha(repo.repo.head.commit.hexsha)
    old_tree = repo.folder_tree(stable, folder)
    if old_tree is None or repo._git("cat-file", "-t", old_tree) != "tree":
        raise CanaryError(f"{relative} did not exist at stable's revision {stable[:7]}")
    commit = _stable_commit(repo, head, folder, old_tree,
                            f"Reject {app} canary {canary[:7]}: back to stable {stable[:7]}\n\n"
                            f"Restores {relative} (except canary.yaml) as of {stable}.")
    _move_to(repo, head, commit, f"gitops-canary reject {app}: back to stable {stable[:7]}")
    print(f"committed {commit[:7]}: {app} back to stable {stable[:7]}; "
          f"push it (or open a pull request) to reject the canary {canary[:7]}")
    return 0


def _stable_commit(repo: GitRepo, head: Sha, folder: str, tree: str, message: str) -> Sha:
    """A child of HEAD whose `folder` is `tree` except for HEAD's canary.yaml, built in a
    temporary index from git objects alone: nothing of the work tree is read or written, so a
    symlink there leads nowhere, and symlinks in `tree` stay symlinks (git's semantics)."""
    policy = f"{folder}/{POLICY_FILE}" if folder else POLICY_FILE
    entry = repo._git("ls-tree", "--full-tree", head, "--", policy).partition("\t")[0].split()
    if len(entry) != 3:
        raise CanaryError(f"{policy}: not in HEAD {head[:7]}")
    mode, _, policy_blob = entry
    with tempfile.TemporaryDirectory() as tmp, repo.repo.git.custom_environment(
            GIT_INDEX_FILE=str(Path(tmp) / "index"), GIT_LITERAL_PATHSPECS="1"):
        if folder:
            repo._git("read-tree", head)
            # --cached -f: the index only, without even looking at the work tree.
            repo._git("rm", "-r", "-q", "-f", "--cached", "--ignore-unmatch", "--", folder)
            repo._git("read-tree", f"--prefix={folder}/", tree)
        else:
            repo._git("read-tree", tree)
        repo._git("update-index", "--add", "--replace", "--cacheinfo",
                  f"{mode},{policy_blob},{policy}")
        new_tree = repo._git("write-tree")
    return Sha(repo._git("commit-tree", new_tree, "-p", head, "-m", message))


def _move_to(repo: GitRepo, head: Sha, commit: Sha, reason: str) -> None:
    """Move the work tree, the index and then the branch from HEAD to `commit` with git's own
    checkout (a two-tree read-tree): a path the canary made a symlink is replaced by the file or
    folder, never written through, and git refuses to overwrite changes or untracked files."""
    repo._git("read-tree", "-m", "-u", head, commit)
    try:
        repo._git("update-ref", "-m", reason, "HEAD", commit, head)
    except CanaryError:
        # HEAD moved meanwhile: put the work tree back where that commit left it.
        repo._git("read-tree", "-m", "-u", commit, head)
        raise


if __name__ == "__main__":
    sys.exit(main())
