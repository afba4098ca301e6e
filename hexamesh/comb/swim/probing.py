"""Probing: links gone quiet are probed, directly then through others (SWIM §3.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hexamesh.comb.swim.members import NEVER, Membership
from hexamesh.comb.swim.messages import MAX_UPDATES, MemberState, Probe, ProbeReq
from hexamesh.net.base import Addr

__all__ = ["Probing"]


@dataclass(slots=True)
class _Probe:
    target: bytes
    sent: float
    indirect_at: float
    give_up_at: float
    indirect_sent: bool = False
    helpers: int = 0  # ProbeReqs sent
    asked: set[bytes] = field(default_factory=set)  # the helpers sent them: only their word counts
    nackers: set[bytes] = field(default_factory=set)  # helpers that could not reach it either


@dataclass(slots=True)
class _Relay:
    requester: Addr
    their_seq: int
    nack_at: float  # tell the requester we failed too (Lifeguard)
    target: bytes = b""  # whose Ack we pass on (no one else's)


class Probing(Membership):
    """Probes of quiet links, indirect probes through helpers, and their timers."""

    _quiet_until: dict[bytes, float]
    _probing: dict[bytes, int]
    _probes: dict[int, _Probe]
    _relays: dict[int, _Relay]
    probes_sent: int

    def _probe_quiet_links(self, now: float) -> None:
        for target, until in self._quiet_until.items():
            if until > now or target in self._probing:
                continue
            member = self.members[target]  # links are members
            self._quiet_until[target] = now + self.awareness.scale(self.config.probe_interval)
            if member.state is MemberState.DEAD:
                continue  # until the owner of the links relinks
            seq = self._rng.getrandbits(64)
            timeout = self.awareness.scale(self.config.probe_timeout)
            self._probes[seq] = _Probe(
                target=target,
                sent=now,
                indirect_at=now + timeout,
                give_up_at=now + self.awareness.scale(self.config.probe_interval),
            )
            self._probing[target] = seq
            updates = self._piggyback()
            if member.state is MemberState.SUSPECT:
                # Tell the suspect first, so it can refute (it is alive if it reads this).
                accusation = self._update(
                    target, member.addr, member.incarnation, MemberState.SUSPECT, self.me
                )
                updates = (accusation, *updates[: MAX_UPDATES - 1])
            self._send(member.addr, seq, Probe(target=target, updates=updates))
            self.probes_sent += 1

    def _check_probes(self, now: float) -> None:
        for seq, probe in list(self._probes.items()):
            if not probe.indirect_sent and now >= probe.indirect_at:
                probe.indirect_sent = True
                probe.helpers = self._ask_indirect(seq, probe, now)
                # And once more directly (memberlist's TCP fallback in spirit): one
                # lost datagram should not be enough to make a suspect.
                member = self.members.get(probe.target)
                if member is not None:
                    self._send(member.addr, seq, Probe(target=probe.target, updates=()))
            if now >= probe.give_up_at:
                del self._probes[seq]
                self._probing.pop(probe.target, None)
                # Lifeguard: helpers that did not even nack point at us, not the target.
                nacks = len(probe.nackers)
                self.awareness.apply(probe.helpers - nacks if probe.helpers else 1)
                # A helper that failed too is an independent accuser: a confirmation.
                self._suspect(probe.target, self.me, now, also=probe.nackers)

    def _ask_indirect(self, seq: int, probe: _Probe, now: float) -> int:
        member = self.members.get(probe.target)
        if member is None:
            return 0
        helpers = [
            n
            for n in self.spread
            if n != probe.target and self.members[n].state is MemberState.ALIVE
        ]
        self._rng.shuffle(helpers)
        # Links heard from lately first, then shortcuts, then watched links gone
        # quiet: after a mass failure, asking dead helpers would cost their
        # nacks (each a confirmation) and wrongly lower our own health. A
        # watched link silent past ``quiet_after`` should have danced: it is
        # likely dead itself; a shortcut never dances to us, its silence
        # tells nothing.
        fresh = now - self.config.quiet_after
        watched = self._watched
        heard_at = self._heard_at
        helpers.sort(
            key=lambda n: 0 if heard_at.get(n, NEVER) >= fresh else (2 if n in watched else 1)
        )
        helpers = helpers[: self.config.indirect_checks]
        probe.asked.update(helpers)
        for helper in helpers:
            req = ProbeReq(
                target=probe.target,
                host=member.addr[0],
                port=member.addr[1],
                updates=self._piggyback(),
            )
            self._send(self.members[helper].addr, seq, req)
        return len(helpers)
