"""Leader election on a `coordination.k8s.io/v1` Lease: two replicas run, one reconciles.

Two controllers reconciling at once fight over records, applies and status notes, so the install
could only run one replica. With a Lease, a second replica waits as a standby and takes over
when the leader dies, within the lease's duration.

The algorithm is client-go's, in a few explicit calls (read, then create or replace with the
resourceVersion read, so of two writers exactly one wins and the other gets 409):

- The holder renews every `renew` seconds, and believes itself leader only until `duration -
  renew` after the start of its last successful renew: it stops reconciling before anyone else
  may start, even when it cannot reach the API server to learn that it lost.
- The others never compare the Lease's renewTime with their own clock (two nodes' clocks
  differ): each notes when it *saw* the Lease change, and takes it once it has not changed for
  the Lease's duration. A Lease without a holder (released) is taken at once.
- On shutdown the holder empties holderIdentity, so a standby need not wait out the duration.

`kubernetes.leaderelection` does the same with callbacks on its own thread; this module keeps
the decision a pure function (`decide`) and one attempt a plain method, which tests can drive.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

LEASE_NAME = "gitops-canary-leader"
LEASE_DURATION = 15.0
LEASE_RENEW = 5.0
MAX_REQUEST_TIMEOUT = 5.0
CONFLICT_RETRIES = 3


def default_identity() -> str:
    """The pod's name when the Deployment passes it, else host and process: unique per run."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class Move(StrEnum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # ours
    TAKE = "take"  # free, or its holder stopped renewing
    WAIT = "wait"  # someone else's, still renewed


@dataclass(frozen=True)
class Seen:
    """What a candidate read of the Lease, and when (its own monotonic clock) it last saw the
    Lease change: the holder's clock never enters the decision."""

    holder: str | None
    version: str
    duration: float
    changed_at: float


def decide(seen: Seen | None, identity: str, now: float) -> Move:
    if seen is None:
        return Move.CREATE
    if seen.holder == identity:
        return Move.RENEW
    if not seen.holder or now - seen.changed_at >= seen.duration:
        return Move.TAKE
    return Move.WAIT


class Elector:
    """One candidate for the Lease `name` in `namespace`. `attempt()` is one round (read, then
    maybe write); `run()` repeats it every `renew` seconds until stopped; `leading()` is what
    the loop asks before each reconcile."""

    def __init__(self, api: client.ApiClient, namespace: str, identity: str, *,
                 name: str = LEASE_NAME, duration: float = LEASE_DURATION,
                 renew: float = LEASE_RENEW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < 2 * renew <= duration:
            raise ValueError(f"lease renew ({renew}s) must be at most half the lease duration "
                             f"({duration}s)")
        self.leases = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration, self.renew, self.clock = duration, renew, clock
        self.timeout = min(MAX_REQUEST_TIMEOUT, renew)
        self._leading_until = -math.inf
        self._seen: Seen | None = None

    def leading(self) -> bool:
        return self.clock() < self._leading_until

    # --- one round --------------------------------------------------------------------------

    def attempt(self) -> bool:
        """Read the Lease and renew or take it if the decision says so; True if leading after.

        A 409 (another candidate wrote in between) is read again at once, a few times. Any
        other failure leaves the deadline as it was: a leader that cannot renew stops when its
        deadline passes, not before."""
        raced: ApiException | None = None
        for _ in range(CONFLICT_RETRIES):
            started = self.clock()
            try:
                lease = self._read()
                move = decide(self._see(lease, started), self.identity, started)
                if move is Move.WAIT:
                    self._leading_until = -math.inf
                    return False
                previous = lease.spec.holder_identity if lease and lease.spec else None
                written = self._write(lease, move)
            except ApiException as error:
                if error.status in (404, 409):  # lost a race: read again
                    raced = error
                    continue
                log.warning("leader election: Lease %s/%s: %s %s", self.namespace, self.name,
                            error.status, error.reason)
                return self.leading()
            except (urllib3.exceptions.HTTPError, OSError) as error:
                log.warning("leader election: Kubernetes API unreachable: %s", error)
                return self.leading()
            self._leading_until = started + self.duration - self.renew
            self._see(written, self.clock())
            if move is Move.TAKE:
                log.info("leader election: took Lease %s/%s from %s", self.namespace, self.name,
                         previous or "nobody (released)")
            return True
        if raced is not None:
            log.warning("leader election: Lease %s/%s: %s %s, %d times in a row", self.namespace,
                        self.name, raced.status, raced.reason, CONFLICT_RETRIES)
        return self.leading()

    def _see(self, lease: client.V1Lease | None, now: float) -> Seen | None:
        if lease is None:
            self._seen = None
            return None
        version = str(lease.metadata.resource_version if lease.metadata else "")
        spec = lease.spec or client.V1LeaseSpec()
        changed_at = now if self._seen is None or self._seen.version != version \
            else self._seen.changed_at
        self._seen = Seen(spec.holder_identity, version,
                          float(spec.lease_duration_seconds or self.duration), changed_at)
        return self._seen

    def _read(self) -> client.V1Lease | None:
        try:
            return self.leases.read_namespaced_lease(self.name, self.namespace,
                                                     _request_timeout=self.timeout)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _write(self, lease: client.V1Lease | None, move: Move) -> client.V1Lease:
        now = _micro_time()
        if lease is None:
            return self.leases.create_namespaced_lease(self.namespace, client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name),
                spec=self._spec(now, now, transitions=0)), _request_timeout=self.timeout)
        old = lease.spec or client.V1LeaseSpec()
        if move is Move.TAKE:
            spec = self._spec(now, now, (old.lease_transitions or 0) + 1)
        else:
            spec = self._spec(old.acquire_time or now, now, old.lease_transitions or 0)
        lease.spec = spec  # the metadata keeps the resourceVersion read: 409 if it moved
        return self.leases.replace_namespaced_lease(self.name, self.namespace, lease,
                                                    _request_timeout=self.timeout)

    def _spec(self, acquired: datetime.datetime, renewed: datetime.datetime,
              transitions: int) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.identity, lease_duration_seconds=math.ceil(self.duration),
            acquire_time=acquired, renew_time=renewed, lease_transitions=transitions)

    # --- the candidate's life ---------------------------------------------------------------

    def run(self, stop: threading.Event, on_elected: Callable[[], None] | None = None) -> None:
        """Attempt every `renew` seconds (from the start of one to the next) until `stop`;
        `on_elected` is called each time this candidate becomes the leader."""
        announced = False
        while not stop.is_set():
            started = self.clock()
            try:
                self.attempt()
            except Exception:  # the thread must outlive any surprise, or the pod idles forever
                log.exception("leader election: attempt failed")
            leading = self.leading()
            if leading != announced:
                announced = leading
                log.log(logging.INFO if leading else logging.WARNING,
                        "leader election: %s Lease %s/%s as %s",
                        "leading with" if leading else "no longer leading:",
                        self.namespace, self.name, self.identity)
                if leading and on_elected is not None:
                    on_elected()
            stop.wait(max(0.0, self.renew - (self.clock() - started)))

    def release(self) -> None:
        """Hand the Lease over now, if we hold it: no holder, a renewTime in the past. The
        caller has stopped reconciling; a failure here only makes the standby wait out the
        duration."""
        self._leading_until = -math.inf
        try:
            lease = self._read()
            if lease is None or lease.spec is None or \
                    lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = _micro_time(datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC))
            self.leases.replace_namespaced_lease(self.name, self.namespace, lease,
                                                 _request_timeout=self.timeout)
            log.info("leader election: released Lease %s/%s", self.namespace, self.name)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            log.warning("leader election: could not release Lease %s/%s: %s", self.namespace,
                        self.name, error)


@contextlib.contextmanager
def elected(elector: Elector, on_elected: Callable[[], None] | None = None,
            ) -> Iterator[Callable[[], bool]]:
    """Campaign in a thread while the block runs; yield `leading`. On exit: stop campaigning,
    then release the Lease, so the block's last reconcile finished before anyone takes over."""
    stop = threading.Event()
    thread = threading.Thread(target=elector.run, args=(stop, on_elected),
                              name="leader-election", daemon=True)
    thread.start()
    try:
        yield elector.leading
    finally:
        stop.set()
        thread.join(timeout=elector.timeout + 1)
        elector.release()


def _micro_time(at: datetime.datetime | None = None) -> datetime.datetime:
    """A MicroTime the API server can parse: the client writes datetimes with isoformat(),
    which drops a zero microsecond, and the server wants exactly six digits."""
    at = at or datetime.datetime.now(datetime.UTC)
    return at if at.microsecond else at.replace(microsecond=1)
