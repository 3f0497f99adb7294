"""Leader election on a coordination.k8s.io/v1 Lease, so two operator replicas never both act.

The same protocol as client-go's leaderelection: the holder renews `renewTime` every retry period;
a standby takes the Lease over once it has seen the record unchanged for a whole lease duration.
Expiry is judged by the standby's own clock from when *it* last saw the record change, never by
comparing its clock with the holder's `renewTime`, so clock skew between nodes cannot cause two
leaders. With the defaults (15 s lease, 2 s retry) a crashed leader is replaced in 15-17 s; a leader
that shuts down cleanly releases the Lease and its standby takes over within one retry (2 s).

The leader that cannot renew for `renew_deadline` (10 s) gives up: it must stop acting before the
standby can possibly take over at 15 s.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("tidal.leader")


@dataclass(frozen=True)
class Observation:
    """What a candidate last saw of the Lease, and when by its own monotonic clock."""
    holder: str
    version: str  # resourceVersion: changes whenever the holder renews
    seen_at: float


def lease_is_free(observed: Observation | None, me: str, duration_s: float, now: float) -> bool:
    """May `me` write itself into the Lease now?

    Free when nobody holds it, when we hold it, or when the holder has not renewed for a whole
    lease duration as measured on our clock: seen unchanged at t=100 with a 15 s lease -> free at 115.
    """
    if observed is None or observed.holder in ("", me):
        return True
    return now >= observed.seen_at + duration_s


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class LeaderElector:
    def __init__(self, api_client: client.ApiClient, namespace: str, name: str, identity: str,
                 lease_duration_s: float = 15.0, renew_deadline_s: float = 10.0, retry_period_s: float = 2.0):
        self.api = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration_s, self.renew_deadline_s, self.retry_period_s = (
            lease_duration_s, renew_deadline_s, retry_period_s)
        self._observed: Observation | None = None
        self._stop = threading.Event()

    # ---- one attempt ----------------------------------------------------------------------------
    def try_acquire_or_renew(self) -> bool:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            return self._create()
        spec = lease.spec
        holder = spec.holder_identity or ""
        version = lease.metadata.resource_version
        if self._observed is None or self._observed.version != version:
            self._observed = Observation(holder, version, time.monotonic())
        if not lease_is_free(self._observed, self.identity, self.lease_duration_s, time.monotonic()):
            return False
        now = _now_rfc3339()
        if holder != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = int(self.lease_duration_s)
        spec.renew_time = now
        try:  # replace carries the resourceVersion we read: a concurrent taker makes this a 409
            updated = self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        self._observed = Observation(self.identity, updated.metadata.resource_version, time.monotonic())
        return True

    def _create(self) -> bool:
        now = _now_rfc3339()
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=int(self.lease_duration_s),
                                    acquire_time=now, renew_time=now, lease_transitions=0))
        try:
            created = self.api.create_namespaced_lease(self.namespace, body)
        except ApiException as err:
            if err.status == 409:  # another candidate created it first
                return False
            raise
        self._observed = Observation(self.identity, created.metadata.resource_version, time.monotonic())
        return True

    # ---- the protocol ---------------------------------------------------------------------------
    def acquire(self) -> None:
        """Block until we lead (or stop() is called)."""
        waiting_logged = False
        while not self._stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    log.info("leading as %s (Lease %s/%s)", self.identity, self.namespace, self.name)
                    return
                if not waiting_logged:
                    log.info("standing by: Lease %s/%s is held by %s", self.namespace, self.name,
                             self._observed.holder if self._observed else "?")
                    waiting_logged = True
            except ApiException as err:
                log.warning("Lease %s/%s: %s %s; retrying", self.namespace, self.name, err.status, err.reason)
            except Exception as err:  # apiserver unreachable: keep trying, never crash the standby
                log.warning("Lease %s/%s: %s; retrying", self.namespace, self.name, err)
            self._stop.wait(self.retry_period_s)

    def keep(self, on_lost) -> threading.Thread:
        """Renew in the background; call on_lost() once if renewal fails for renew_deadline."""
        def renew_loop():
            last_renewed = time.monotonic()
            while not self._stop.wait(self.retry_period_s):
                try:
                    if self.try_acquire_or_renew():
                        last_renewed = time.monotonic()
                        continue
                    holder = self._observed.holder if self._observed else ""
                    taken = holder not in ("", self.identity)
                    reason = f"the Lease is now held by {holder}" if taken else "renewal conflicted"
                except Exception as err:
                    taken, reason = False, f"renewal failed: {err}"
                if taken or time.monotonic() - last_renewed >= self.renew_deadline_s:
                    log.error("lost leadership of Lease %s/%s (%s); stopping", self.namespace, self.name, reason)
                    on_lost()
                    return
        thread = threading.Thread(target=renew_loop, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Hand the Lease back on a clean shutdown, so the standby takes over at once.

        The Lease is deleted rather than emptied: a standby creates a new one within a retry period,
        and `helm uninstall` (which stops every replica cleanly) leaves no Lease behind. The delete is
        conditional on the version we last wrote, so it never removes a successor's Lease.
        """
        self._stop.set()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            self.api.delete_namespaced_lease(self.name, self.namespace, body=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(resource_version=lease.metadata.resource_version)))
            log.info("released Lease %s/%s", self.namespace, self.name)
        except Exception as err:  # the standby will take over after the lease duration anyway
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, err)

    def stop(self) -> None:
        self._stop.set()
