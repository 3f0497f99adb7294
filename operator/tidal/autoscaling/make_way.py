"""Who makes way in a full pool: a pure function of the pool's services (no I/O, no clock reads).

When a service has requests held at the gateway and a replica Pending because its pool has no free GPU, a
replica of another service in the same pool that is idle (nothing waiting, running or held) is scaled down to
free the GPU; the real scheduler then places the Pending replica there. Without it, held requests of a service
waking from zero wait for GPUs that quieter services keep through their idle period (300 s by default) until
the hold times out: on the 50-service fleet with 32 GPUs that was 138,666 lost requests.

Which replica goes (`cheapest_first`): the lowest priority first (a higher one gives way to a lower one's requests
only once they have waited half the hold: nobody waits forever); then a service that keeps other replicas
before a service's last one (its next request then waits for nobody); then the one idle longest (least likely
to be needed soon). Never below a service's minReplicas, never a busy service, never one that is itself waiting
for a GPU, and one replica per Pending replica: nothing more is taken than is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

Key = tuple[str, str]
TIERS = {"low": 0, "normal": 1, "high": 2}  # spec.placement.priority; unset is normal
# Requests held for half the hold outrank priority: a low service is never starved by idle high ones.
OUTRANK_AFTER = 0.5


@dataclass(frozen=True)
class Seat:
    """One service in a pool, as the autoscaler last saw it."""
    key: Key
    replicas: int  # replicas asked for
    ready: int
    min_replicas: int
    busy: bool  # anything waiting, running or held at its last observation
    idle_since: float | None  # when it last had work (None: never, since the operator started watching)
    pending_for_gpu: int = 0  # its replicas the scheduler cannot place: the pool is full
    held: float = 0.0  # requests held at the gateway for it
    oldest_held_s: float = 0.0  # how long the oldest of them has waited
    gpus: int = 1  # per replica: a donor frees a place only for a replica that needs no more than it had
    priority: int = 0


@dataclass(frozen=True)
class Yield:
    victim: Key
    replicas: int  # the victim's replicas after giving one up
    for_service: Key
    message: str


def waiting_for_gpu(seat: Seat) -> bool:
    """A service whose held requests wait for a replica the full pool cannot place."""
    return seat.pending_for_gpu > 0 and seat.held > 0


def can_yield(seat: Seat, now: float, min_idle_s: float) -> bool:
    idle_long = seat.idle_since is None or now - seat.idle_since >= min_idle_s
    return (not seat.busy and idle_long and seat.ready > 0 and seat.replicas > seat.min_replicas
            and seat.pending_for_gpu == 0 and seat.held == 0)


def cheapest_first(seat: Seat) -> tuple:
    last_one = seat.replicas == 1
    idle_since = seat.idle_since if seat.idle_since is not None else float("-inf")
    return (seat.priority, last_one, idle_since)


def idle_enough_to_yield(oldest_held_s: float, hold_timeout_s: float, floor_s: float) -> float:
    """How long a replica must have been idle to make way for requests held this long: the time those requests
    have left before the hold gives up on them (a replica idle for longer than the requests can still wait is
    a worse bet to keep than they are to lose), never less than `floor_s`. Requests held 500 s of a 600 s hold:
    a replica idle 100 s makes way; held a moment: one idle 600 s, by which time it has gone to zero anyway,
    so a short wait takes nothing from anyone (making way for every fresh request cost the 32-GPU fleet twice
    the misses: 2,312 cold starts where 151 did)."""
    return max(floor_s, hold_timeout_s - oldest_held_s)


def make_way(seats: list[Seat], now: float, hold_timeout_s: float = 300.0, floor_s: float = 0.0) -> list[Yield]:
    """The scale-downs that free a GPU for each Pending replica of a service with held requests (the longest
    held first), taken from idle services in `cheapest_first` order."""
    needy = sorted((s for s in seats if waiting_for_gpu(s)), key=lambda s: (-s.priority, -s.oldest_held_s))
    left = {s.key: s.replicas for s in seats}
    out: list[Yield] = []
    for seat in needy:
        idle_s = idle_enough_to_yield(seat.oldest_held_s, hold_timeout_s, floor_s)
        outranks = seat.oldest_held_s >= OUTRANK_AFTER * hold_timeout_s
        donors = [s for s in seats if can_yield(s, now, idle_s) and (s.priority <= seat.priority or outranks)
                  and s.gpus >= seat.gpus]
        for _ in range(seat.pending_for_gpu):
            # A donor that gave one up may now be down to its last replica: ordered on what it has left.
            able = [d for d in donors if left[d.key] > d.min_replicas]
            if not able:
                break
            donor = min(able, key=lambda d: cheapest_first(replace(d, replicas=left[d.key])))
            left[donor.key] -= 1
            idle = f"idle for {now - donor.idle_since:.0f} s" if donor.idle_since is not None else "idle"
            out.append(Yield(donor.key, left[donor.key], seat.key,
                             f"scaled down to make way for {seat.key[0]}/{seat.key[1]}: {seat.held:g} request(s) "
                             f"held (the oldest {seat.oldest_held_s:.0f} s) and no free GPU in the pool; this "
                             f"service was {idle}"))
    return out
