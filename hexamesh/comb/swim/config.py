"""SWIM's settings, each with its unit and reason (memberlist's ``DefaultLANConfig`` way)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NACK_AT", "PIGGYBACK_QUEUE", "SYNC_SPREAD", "SwimConfig"]

# A helper that cannot reach a target says so (Nack) at this share of the probe
# timeout: the requester, which waits the whole timeout, hears it in time.
NACK_AT = 0.8
# Push-pulls are drawn this many sync_intervals apart, uniformly: nodes that
# joined together do not all sync in the same second.
SYNC_SPREAD = (0.5, 1.5)
PIGGYBACK_QUEUE = 1024  # news items waiting to ride probes and acks; the most-sent go first


@dataclass(frozen=True, kw_only=True)
class SwimConfig:
    probe_interval: float = (
        1.0  # s; a silent link is probed at most once per interval (memberlist LAN)
    )
    quiet_after: float = 1.25  # s of silence before a probe: links dance every 1 s, so one
    # lost heartbeat costs one probe and a dead link is probed 1.25 s after its last word
    probe_timeout: float = (
        0.5  # s; well above LAN RTT, leaves half the interval for indirect probes
    )
    indirect_checks: int = 3  # links asked to probe on our behalf (memberlist IndirectChecks)
    # Minimum suspicion = mult * log10(N) * interval. memberlist's LAN value is 4;
    # here a link is watched by the other neighbours that share it, whose
    # independent suspicions (and the helpers' nacks) confirm each other, so a
    # short minimum is safe (comb report: no false positive at 5 % loss).
    suspicion_mult: float = 0.5
    suspicion_max_mult: float = 4.0  # suspicion starts at max_mult times the minimum (Lifeguard)
    suspicion_confirmations: int = 2  # independent accusers that bring it down to the minimum
    # (memberlist uses SuspicionMult - 2; in a honeycomb two other neighbours share each link)
    retransmit_mult: int = 4  # piggybacked news rides mult * ceil(log10(N + 1)) messages
    gossip_interval: float = 0.1  # s; news waits at most this long for its flood (batching)
    flood_rounds: int = 2  # copies of one item a comb link gets at most (a lost datagram
    # is repaired by the second round; a link that told us the news gets none); a
    # shortcut gets one
    flood_repeat: float = 0.5  # s between the rounds (time for links to echo it back)
    piggyback_bytes: int = 900  # bytes of updates per probe or ack, well inside a datagram
    awareness_max: int = 8  # local health scales timings by at most this factor
    sync_interval: float = 30.0  # s between push-pull exchanges with one random link (memberlist)
    reconnect_interval: float = 30.0  # s between tries to reach one member held dead (Serf's
    # reconnect): after a partition heals, each side holds the other dead and, having
    # relinked around it, never hears from it; the one reached refutes and it spreads
    new_link_sync: float = 3.0  # s after a comb link is made, a push-pull with it: the flood
    # does not resend finished news to links made later, and a node whose links all died
    # heard nothing until its next push-pull (up to 45 s). By then the flood is over, so
    # the fingerprints agree and the ask is one datagram, unless news is really missing
    sync_news_age: float = 90.0  # s; older news is no longer exchanged: every node has had
    # a few syncs to pull what it missed (memberlist forgets the dead after 30 s). Without
    # it, after a mass failure every sync carried a thousand old deaths (tens of KB) forever.
    tombstone_ttl: float = 360.0  # s a member held dead is kept, then forgotten (reaped),
    # cells and address with it (Comb). It guards against stale copies bringing the node
    # back: a dance leaves views after 60 s, news leaves push-pull after 90 s, a dead
    # node's cell lease runs out after 60 s and its model: lease after 300 s. Serf keeps
    # tombstones 24 h, for reconnects across long partitions; here a swarm under churn
    # (new identities) would hold every death of the day: 72,000 a day at 5 % of 1,000
    # nodes a minute, where 6 min hold ~300 (docs/decisions.md).
    hearsay_ttl: float = 360.0  # s a live member that is neither link nor shortcut is kept
    # after the last news of it and the last word from it (a former link or shortcut, a
    # node heard of in a flood); a relink adds it back when it is a link again
    reap_interval: float = 30.0  # s between sweeps for members and notes past their time
