"""Informers (`Kube.watch`): the records and the labelled objects are listed once and then
watched, so a reconcile reads them without a request; someone else's change wakes the loop,
which compares the app with git at once instead of at the next resync; a watch cut off lists
again and reports what changed meanwhile. Real API server, changes made as `kubectl` makes
them (another field manager), a real TCP proxy to cut the connections."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from prometheus_client import generate_latest

from controller.domain.render import Key
from controller.domain.types import LABEL_APP
from controller.drift import Resync
from controller.edges.kube import RETRIES, Kube
from controller.edges.watch import Informer
from controller.metrics import Metrics
from controller.run import loop
from localcluster.counting import Requests
from tests.controller.conftest import Harness, deployment
from tests.controller.test_drift import app, core, drift_events, hand_edit, image, stable

pytestmark = pytest.mark.cluster

Seen = list[tuple[str, Key, str]]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"not within {timeout:.0f}s: {what}")


def scraped(kube: Kube) -> str:
    """/metrics of a controller watching with `kube`."""
    metrics = Metrics()
    metrics.watches = kube.watches
    return generate_latest(metrics.registry).decode()


def synced(kube: Kube, kind: str, namespace: str) -> Informer:
    informer = kube.informer(kind, namespace)
    assert informer is not None, f"{kind} is not watched"
    assert informer.wait_synced(30), f"{kind} in {namespace} never listed"
    return informer


def labelled(obj: dict[str, Any], app_name: str = "web") -> dict[str, Any]:
    obj["metadata"].setdefault("labels", {})[LABEL_APP] = app_name
    return obj


@contextlib.contextmanager
def watching(kube: Kube, seen: Seen | None = None,
             on_change: Callable[[str, Key, str], None] | None = None) -> Iterator[Kube]:
    kube.watch(on_change=on_change or (lambda *change: seen.append(change)
                                       if seen is not None else None))
    try:
        yield kube
    finally:
        kube.close()


def test_the_copy_follows_the_cluster_and_reports_only_someone_elses_changes(
        api_client: client.ApiClient, namespace: str, state_namespace: str) -> None:
    seen: Seen = []
    kube = Kube(api_client, frozenset({namespace}), state_namespace=state_namespace)
    web = labelled(deployment("web", "10", replicas=2))
    web["metadata"]["namespace"] = namespace
    config_map = labelled({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "web-config", "namespace": namespace},
                           "data": {"GREETING": "hello"}})
    deployments = client.AppsV1Api(api_client)
    with watching(kube, seen):
        kube.apply([web, config_map])
        synced(kube, "Deployment", namespace)
        wait_for(lambda: (d := deployments.read_namespaced_deployment("web", namespace))
                 and d.status.ready_replicas == 2, "web rolled out")
        series = f'{{kind="Deployment",namespace="{namespace}"}}'
        assert f"gitops_canary_watch_synced{series} 1.0" in scraped(kube)
        assert f"gitops_canary_watch_lists_total{series} 1.0" in scraped(kube)
        web["spec"]["replicas"] = 3  # the controller's own change, and the rollout after it
        kube.apply([web])
        wait_for(lambda: deployments.read_namespaced_deployment(
            "web", namespace).status.ready_replicas == 3, "web scaled by the controller")

        # `kubectl scale`: the scale subresource, another field manager
        deployments.patch_namespaced_deployment_scale("web", namespace,
                                                      {"spec": {"replicas": 1}},
                                                      field_manager="kubectl")
        wait_for(lambda: seen, "the scale seen")
        # Events come in order: the controller's apply, the rollout's status updates and
        # the revision annotation came before the scale, and none was reported.
        assert seen == [("web", ("Deployment", namespace, "web"), "changed")]
        counted = Requests(api_client)
        assert wait_for(lambda: (kube.get(("Deployment", namespace, "web")) or {}).get(
            "spec", {}).get("replicas") == 1, "the copy has the scale")
        assert counted.made == []  # read from the copy

        kube.delete(("ConfigMap", namespace, "web-config"), app="web")  # the controller's
        deployments.delete_namespaced_deployment("web", namespace)  # someone else's
        wait_for(lambda: len(seen) == 2, "the delete seen")
        assert seen[1] == ("web", ("Deployment", namespace, "web"), "deleted")
        assert kube.get(("ConfigMap", namespace, "web-config")) is None


def test_records_are_read_from_the_copy_and_written_through_it(
        harness: Harness) -> None:
    kube = harness.reconciler.kube
    with watching(kube, on_change=harness.reconciler.changed):
        app(harness)
        stable(harness)
        synced(kube, "ConfigMap", harness.state_namespace)
        harness.settle(lambda: harness.reconcile().outcomes[0].skipped, "nothing left to do")
        counted = Requests(harness.api)

        steady = harness.reconcile()

        assert steady.outcomes[0].skipped
        assert counted.made == []  # no records list, no read: git alone said nothing changed

        app(harness, rate="20")  # a canary: its own writes, and a look at each new name
        counted.clear()
        harness.reconcile()
        writes = [path for method, path in counted.made if method == "PATCH"]
        reads = [path for method, path in counted.made if method == "GET"]
        assert writes, "the canary was not applied"
        # The only reads: is a variant's name free? (the copy holds only what the app label
        # marks, so it cannot say that nobody else has an object of that name)
        assert reads, "no name was checked"
        assert all(path.endswith(("-baseline", "-canary")) and path in writes
                   for path in reads), counted.made
        assert {method for method, _ in counted.made} == {"GET", "PATCH"}, counted.made
        harness.settle(lambda: harness.record("web").phase.value == "AwaitingPromotion",
                       "the canary awaiting a person")

        counted.clear()
        waiting = harness.reconcile()  # in flight, nothing changed: nothing asked

        assert waiting.outcomes[0].record.phase.value == "AwaitingPromotion"
        assert counted.made == []
        # Read your writes: the record the pass wrote is the one the next pass reads.
        assert harness.record("web") == waiting.outcomes[0].record


def test_drift_is_corrected_as_soon_as_the_watch_sees_it_not_at_the_resync(
        harness: Harness) -> None:
    app(harness)
    stable(harness)
    reconciler = harness.reconciler
    reconciler.resync = Resync(3600.0)  # the periodic comparison is an hour away
    stop, wake = threading.Event(), threading.Event()
    with watching(reconciler.kube, on_change=reconciler.changed):
        harness.reconcile()  # the informers start with the reads
        for kind in ("Deployment", "Service", "ConfigMap"):
            synced(reconciler.kube, kind, harness.namespace)
        runner = threading.Thread(target=loop, args=(reconciler, 3600.0, stop),
                                  kwargs={"wake": wake}, daemon=True)
        runner.start()
        try:
            wait_for(lambda: not wake.is_set() and reconciler._paths, "the first pass")
            hand_edit(harness)
            core(harness).delete_namespaced_service("web", harness.namespace)

            wait_for(lambda: (web := harness.deployments()["web"]) and
                     (web.spec.replicas, image(web)) == (4, "sampleapp:v1"),
                     "the scale and the image corrected")
            wait_for(lambda: core(harness).list_namespaced_service(harness.namespace).items,
                     "the Service recreated")
        finally:
            stop.set()
            runner.join(timeout=60)
    assert not runner.is_alive()
    assert "Deployment web: corrected to git: spec.replicas 1 → 4, spec.template.spec." \
           "containers[0].image sampleapp:hacked → sampleapp:v1" in \
           drift_events(harness, "DriftCorrected")
    assert any(e.startswith("Service web: corrected to git")
               for e in drift_events(harness, "DriftCorrected"))


class Cuttable:
    """A TCP proxy to the API server whose connections can be cut, as a network partition
    or a restarting API server cuts them: `cut()` closes every connection and refuses new
    ones until `restore()`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = False
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                conn.close()
                continue
            upstream = socket.create_connection(self.upstream, timeout=5)
            upstream.settimeout(None)
            with self.lock:
                self.open += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.down = True
        with self.lock:
            cut, self.open = self.open, []
        for s in cut:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_watch_cut_off_lists_again_and_reports_what_changed_meanwhile(
        kubeconfig: Path, api_client: client.ApiClient, namespace: str,
        state_namespace: str) -> None:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    host, _, port = configuration.host.removeprefix("https://").partition(":")
    proxy = Cuttable((host, int(port)))
    configuration.host = f"https://127.0.0.1:{proxy.port}"
    configuration.retries = RETRIES
    seen: Seen = []
    kube = Kube(client.ApiClient(configuration), frozenset({namespace}),
                state_namespace=state_namespace)
    maps = [labelled({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": name, "namespace": namespace},
                      "data": {"GREETING": "hello"}}) for name in ("kept", "changed", "gone")]
    direct = client.CoreV1Api(api_client)  # someone else, not behind the proxy
    try:
        with watching(kube, seen):
            kube.apply(maps)
            informer = synced(kube, "ConfigMap", namespace)
            wait_for(lambda: kube.get(("ConfigMap", namespace, "gone")), "the copy filled")

            proxy.cut()
            wait_for(lambda: not informer.synced, "the copy no longer trusted")
            series = f'{{kind="ConfigMap",namespace="{namespace}"}}'
            assert f"gitops_canary_watch_synced{series} 0.0" in scraped(kube)
            assert kube.informer("ConfigMap", namespace) is informer
            direct.patch_namespaced_config_map("changed", namespace,
                                               {"data": {"GREETING": "hacked"}},
                                               field_manager="kubectl")
            direct.delete_namespaced_config_map("gone", namespace)
            proxy.restore()

            wait_for(lambda: informer.synced and informer.lists >= 2, "listed again")
            assert f"gitops_canary_watch_lists_total{series} {informer.lists:.1f}" in \
                scraped(kube)
            assert sorted(seen) == [("web", ("ConfigMap", namespace, "changed"), "changed"),
                                    ("web", ("ConfigMap", namespace, "gone"), "deleted")]
            assert (kube.get(("ConfigMap", namespace, "changed")) or {})["data"] == \
                {"GREETING": "hacked"}
            counted = Requests(kube.api)
            assert kube.get(("ConfigMap", namespace, "kept")) is not None
            assert counted.made == []  # the copy is trusted again
    finally:
        proxy.close()
