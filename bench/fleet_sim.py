"""A day of speech requests against a simulated fleet: what a fixed fleet, an autoscaled one and an autoscaled mixed
one (on-demand and interruptible) would cost for the same requests. No network and no servers: discrete time in
1-second steps, so a day is replayed in seconds and the same seed gives the same day.

The model, kept small on purpose (each piece is an assumption the bench states):
- a replica serves up to `streams` requests at once; a request of A seconds of audio takes A x `rtf` seconds;
- requests go to the ready replica with the fewest streams (HAProxy's leastconn); with none free they wait in one
  queue, first come first served, and a request that waited `queue_timeout_s` is answered 429;
- a new replica bills from its create and serves after `boot_s` (rent, pull, load, warm up);
- a replica being removed takes no new request, finishes its streams, then stops billing (drain);
- an interruptible replica is stopped by a higher bid after an exponential time (`preempt_per_h`); its streams are
  cut (counted, not served), it stops billing then, and it is replaced at once by a new interruptible one (as the
  autoscale loop's preemption check does);
- the autoscaled fleets are driven by the real policy (deploy/fleet/autoscale_policy.Autoscaler) every `check_s`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from deploy.fleet.autoscale_policy import Autoscaler, Observation, Policy

DAY_S = 86400


@dataclass(frozen=True)
class Request:
    at: int  # second of the day it arrives
    audio_s: float


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method: fine for the few arrivals a second has."""
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def day_trace(
    *,
    seed: int,
    peak_rpm: float,
    night_rpm: float,
    noise: float = 0.15,
    mean_audio_s: float = 12.0,
    seconds: int = DAY_S,
) -> list[Request]:
    """Requests per minute on a smooth day curve, lowest at the start (04:00) and highest 12 hours later, each
    minute's rate scaled by lognormal noise, Poisson arrivals within it; audio lengths lognormal around
    `mean_audio_s` (1 to 60 s). Starting at the quietest hour lets every fleet start at its floor."""
    rng = random.Random(seed)
    sigma = 0.5
    mu = math.log(mean_audio_s) - sigma**2 / 2
    out = []
    for minute in range(math.ceil(seconds / 60)):
        shape = (1 - math.cos(2 * math.pi * minute / 1440)) / 2
        rpm = (night_rpm + (peak_rpm - night_rpm) * shape) * math.exp(rng.gauss(0, noise) - noise**2 / 2)
        for s in range(minute * 60, min(seconds, minute * 60 + 60)):
            for _ in range(_poisson(rng, rpm / 60)):
                out.append(Request(s, min(60.0, max(1.0, rng.lognormvariate(mu, sigma)))))
    return out


@dataclass(frozen=True)
class Setup:
    """One fleet under test. `fixed`: that many on-demand replicas all day; else `policy` drives it, with
    `on_demand_min` None (every replica on demand) or K (K on demand, the rest interruptible)."""

    name: str
    streams: int
    rtf: float
    boot_s: float
    queue_timeout_s: float
    on_demand_usd_h: float
    interruptible_usd_h: float
    preempt_per_h: float = 0.0
    fixed: int | None = None
    policy: Policy | None = None
    on_demand_min: int | None = None
    check_s: int = 15
    seed: int = 0


@dataclass
class Replica:
    id: int
    interruptible: bool
    created: float
    ready_at: float
    preempt_at: float = math.inf
    streams: list[tuple[float, float]] = field(default_factory=list)  # (finish second, audio seconds)
    draining: bool = False
    ended: float | None = None

    def rate(self, s: Setup) -> float:
        return s.interruptible_usd_h if self.interruptible else s.on_demand_usd_h


@dataclass
class Result:
    name: str
    requests: int = 0
    served: int = 0
    rejected_429: int = 0
    cut: int = 0  # streams cut by a preemption
    unfinished: int = 0  # still streaming when the day ended
    audio_served_s: float = 0.0
    preemptions: int = 0
    on_demand_h: float = 0.0
    interruptible_h: float = 0.0
    on_demand_usd: float = 0.0
    interruptible_usd: float = 0.0
    replicas_min: int = 0
    replicas_max: int = 0
    replicas_by_hour: list[float] = field(default_factory=list)  # mean live replicas in each hour
    wait_p95_s: float = 0.0  # queue wait of the requests served

    @property
    def usd(self) -> float:
        return self.on_demand_usd + self.interruptible_usd

    @property
    def rate_429(self) -> float:
        return self.rejected_429 / self.requests if self.requests else 0.0

    @property
    def usd_per_audio_h(self) -> float | None:
        return self.usd / (self.audio_served_s / 3600) if self.audio_served_s > 0 else None

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.update(usd=self.usd, rate_429=self.rate_429, usd_per_audio_h=self.usd_per_audio_h)
        return d


class Sim:
    def __init__(self, setup: Setup, seconds: int) -> None:
        self.s, self.seconds = setup, seconds
        self.rng = random.Random(setup.seed)
        self.replicas: list[Replica] = []
        self.queue: list[Request] = []
        self.head = 0  # the queue's first waiting request
        self.waits: list[float] = []
        self.out = Result(setup.name)

    def add(self, t: float, interruptible: bool, *, ready: bool = False) -> None:
        r = Replica(len(self.replicas), interruptible, t, t if ready else t + self.s.boot_s)
        if interruptible and self.s.preempt_per_h > 0:
            r.preempt_at = t + self.rng.expovariate(self.s.preempt_per_h / 3600)
        self.replicas.append(r)

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.ended is None]

    def end(self, r: Replica, t: float) -> None:
        r.ended = t
        hours = (t - r.created) / 3600
        if r.interruptible:
            self.out.interruptible_h += hours
            self.out.interruptible_usd += hours * self.s.interruptible_usd_h
        else:
            self.out.on_demand_h += hours
            self.out.on_demand_usd += hours * self.s.on_demand_usd_h

    def step(self, t: int, arriving: list[Request]) -> None:
        for r in self.live():
            if t >= r.preempt_at:  # outbid: streams cut, billing stops, a new interruptible one is rented
                self.out.preemptions += 1
                self.out.cut += len(r.streams)
                r.streams = []
                self.end(r, t)
                self.add(t, True)
                continue
            done = [x for x in r.streams if x[0] <= t]
            if done:
                r.streams = [x for x in r.streams if x[0] > t]
                self.out.served += len(done)
                self.out.audio_served_s += sum(a for _, a in done)
            if r.draining and not r.streams:
                self.end(r, t)
        self.queue.extend(arriving)
        self.out.requests += len(arriving)
        while self.head < len(self.queue) and t - self.queue[self.head].at >= self.s.queue_timeout_s:
            self.head += 1
            self.out.rejected_429 += 1
            self._rejected_since += 1
        free = [r for r in self.live() if not r.draining and r.ready_at <= t and len(r.streams) < self.s.streams]
        while self.head < len(self.queue) and free:
            r = min(free, key=lambda x: len(x.streams))
            q = self.queue[self.head]
            self.head += 1
            self.waits.append(t - q.at)
            r.streams.append((t + max(1.0, q.audio_s * self.s.rtf), q.audio_s))
            if len(r.streams) >= self.s.streams:
                free.remove(r)
        if self.head > 4096:  # keep the list short
            self.queue, self.head = self.queue[self.head :], 0

    def observe(self, t: int) -> Observation:
        live = [r for r in self.live() if not r.draining]
        ready = [r for r in live if r.ready_at <= t]
        obs = Observation(
            now=float(t),
            replicas=len(ready),
            pending=len(live) - len(ready),
            active_streams=sum(len(r.streams) for r in ready),
            queued=len(self.queue) - self.head,
            rejected_429=self._rejected_since,
            usd_per_h=sum(r.rate(self.s) for r in self.live()),
            next_replica_usd_per_h=self.s.interruptible_usd_h if self.next_interruptible() else self.s.on_demand_usd_h,
        )
        self._rejected_since = 0
        return obs

    def next_interruptible(self) -> bool:
        """The mix rule (deploy/fleet/model.FleetSpec.kinds): on demand until the fleet holds K of them."""
        k = self.s.on_demand_min
        if k is None:
            return False
        return sum(1 for r in self.live() if not r.draining and not r.interruptible) >= k

    def act(self, t: int, action: str, count: int) -> None:
        if action == "add":
            for _ in range(count):
                self.add(t, self.next_interruptible())
        elif action == "remove":  # newest first, as deploy scale chooses (deploy/fleet/model.choose_for_removal)
            for r in sorted((r for r in self.live() if not r.draining), key=lambda r: -r.id)[:count]:
                r.draining = True
                if not r.streams:
                    self.end(r, t)

    def run(self, trace: list[Request]) -> Result:
        s = self.s
        self._rejected_since = 0
        scaler = Autoscaler(s.policy) if s.policy is not None else None
        start = s.fixed if s.fixed is not None else (s.policy.min_replicas if s.policy else 1)
        for _ in range(start):
            self.add(0, False, ready=True)  # the floor is on demand, up when the day starts
        by_second: dict[int, list[Request]] = {}
        for q in trace:
            by_second.setdefault(q.at, []).append(q)
        hour_sum = 0
        for t in range(self.seconds):
            self.step(t, by_second.get(t, []))
            if scaler is not None and t % s.check_s == 0:
                d = scaler.decide(self.observe(t))
                self.act(t, d.action, d.count)
            n = len(self.live())
            self.out.replicas_max = max(self.out.replicas_max, n)
            self.out.replicas_min = n if t == 0 else min(self.out.replicas_min, n)
            hour_sum += n
            if (t + 1) % 3600 == 0:
                self.out.replicas_by_hour.append(round(hour_sum / 3600, 2))
                hour_sum = 0
        for r in self.live():  # the day ends: what is still there bills to the end, streams unfinished
            self.out.unfinished += len(r.streams)
            self.end(r, self.seconds)
        self.out.rejected_429 += len(self.queue) - self.head  # still waiting at the end: counted as refused
        waits = sorted(self.waits)
        self.out.wait_p95_s = waits[min(len(waits) - 1, int(0.95 * len(waits)))] if waits else 0.0
        return self.out


def simulate(trace: list[Request], setup: Setup, seconds: int = DAY_S) -> Result:
    return Sim(setup, seconds).run(trace)


def peak_streams(trace: list[Request], rtf: float, seconds: int = DAY_S) -> int:
    """The most streams running at once if every request started when it arrived (unbounded capacity)."""
    delta = [0] * (seconds + 1)
    for q in trace:
        delta[q.at] += 1
        delta[min(seconds, q.at + math.ceil(max(1.0, q.audio_s * rtf)))] -= 1
    best = running = 0
    for d in delta:
        running += d
        best = max(best, running)
    return best


def sized_for_peak(trace: list[Request], setup: Setup, seconds: int = DAY_S) -> tuple[int, Result]:
    """The smallest fixed on-demand fleet that answers the whole trace with no 429, from the lower bound of its
    peak streams up."""
    n = max(1, math.ceil(peak_streams(trace, setup.rtf, seconds) / setup.streams) - 2)
    while True:
        res = simulate(trace, _fixed(setup, n), seconds)
        if res.rejected_429 == 0:
            return n, res
        n += 1


def _fixed(setup: Setup, n: int) -> Setup:
    from dataclasses import replace

    return replace(setup, fixed=n, policy=None, on_demand_min=None, preempt_per_h=0.0)
