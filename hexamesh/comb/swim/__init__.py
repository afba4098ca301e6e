"""SWIM failure detection over a node's links, with Lifeguard's refinements (sans-IO).

Theory of operation
-------------------
The honeycomb gives each node a few *watched links* (its comb neighbours) and
a few more *spread links* (shortcuts); this core watches the first and tells
both what it learns.

*Probing* (SWIM §3.1). Comb neighbours hear from each other every heartbeat
(waggle pushes; any message is proof of life), so a link is probed only when
it has been silent for ``quiet_after``: one lost heartbeat costs one probe,
and a dead neighbour is probed at once, not when a round robin reaches it.
A probe with no ``Ack`` within ``probe_timeout`` is retried through up to
``indirect_checks`` other links (``ProbeReq``), which answer ``Nack`` when
they cannot reach the target either; no ack by ``probe_interval`` makes the
target *suspect*. A link keeps being probed while it is silent, at most once
per ``probe_interval``.

*Suspicion* (SWIM §4.2, Lifeguard §3.2). Only a node's watchers act on a
suspicion: they time it out, confirm it with their own failed probes, and
tell each other. The timeout starts at ``suspicion_max_mult`` times the
minimum ``suspicion_mult * log10(N) * interval`` and shrinks towards that
minimum as other watchers independently suspect it too. A suspect hears of
it at once (the accuser's probes and flood carry it) and refutes with a
higher *incarnation*; ``alive`` news with a higher incarnation overrides
suspicion and death. A node told it is dead rejoins the same way. Nodes that
do not watch a suspect ignore the suspicion and wait for the verdict, so a
refutation only has to reach the few watchers, who are one hop away.

*Dissemination* (SWIM §4.1, as a flood over the comb). News (a death, a
suspicion among watchers, a refutation, a rejoin) is batched for at most
``gossip_interval`` (it joins the next flood already due) and then sent to
every link and shortcut that has not told us the same thing, and once more
``flood_repeat`` later to the comb links: ``flood_rounds`` copies per link
at most and one per shortcut, so each node sends one item about
``flood_rounds * links + shortcuts`` times, the same order as SWIM's
``retransmit_mult * log10(N)``. The second round repairs a lost copy; a
shortcut only speeds the flood across the comb, which carries it anyway.
Over a comb with shortcuts a flood reaches every node in O(log N) hops, and a
node misses it only if every copy from every link is lost. News also rides
on every probe and ack (retransmit-limited piggybacking) until its flood is
done; after that it only cost bytes. Join news is not
flooded: a joiner's neighbourhood learns it from its dances, and nobody
needs a full member list (the DHT finds anyone).

*Local health* (Lifeguard §3.1). A failed probe raises our awareness score by
the number of helpers that did not even answer ``Nack`` (all of them when
there were none to ask), an answered probe lowers it; timings stretch by
``score + 1``, so a node that is itself slow or cut off probes less and
accuses later instead of accusing healthy peers.

*Anti-entropy.* Every ``sync_interval`` a node swaps its notable news
(deaths, suspicions, refutations) with one random link (push-pull), which
repairs what a lost flood missed. It asks with its suspicions (few, and
each a confirmation for another watcher) and a fingerprint of its deaths and
refutations of the last ``sync_news_age``; a link whose own fingerprint
differs answers with all its news, and the asker then sends what that
answer lacked; one that agrees answers with its suspicions, if any. After a
mass failure two neighbours hold the same thousands of deaths, and a
push-pull between them costs two small datagrams instead of two digests of
a thousand entries. A node also asks each new comb link for a push-pull
``new_link_sync`` after linking: the flood does not resend finished news to
links made later, and a node whose links all died would hear nothing until
its next push-pull.

*What it hands out.* Membership changes for the rest of the agent
(``events``: ``MembershipEvent``), and orders for the owner of the links and
the cell map (``orders``: ``Relink``, ``TellWatchers`` with our own
accusations, ``Forgotten`` dead members), as values: the core calls nobody.
"""

from hexamesh.comb.swim.config import SwimConfig
from hexamesh.comb.swim.core import Swim
from hexamesh.comb.swim.members import (
    RELINK,
    Forgotten,
    MembershipEvent,
    Relink,
    SwimOrder,
    TellWatchers,
)
from hexamesh.comb.swim.messages import (
    MAX_SYNC,
    MAX_UPDATES,
    SWIM_MESSAGES,
    SYNC_ANSWER,
    SYNC_ASK,
    SYNC_REST,
    Ack,
    Gossip,
    MemberState,
    MemberUpdate,
    Nack,
    Probe,
    ProbeReq,
    Sync,
)

__all__ = [
    "MAX_SYNC",
    "MAX_UPDATES",
    "RELINK",
    "SWIM_MESSAGES",
    "SYNC_ANSWER",
    "SYNC_ASK",
    "SYNC_REST",
    "Ack",
    "Forgotten",
    "Gossip",
    "MemberState",
    "MemberUpdate",
    "MembershipEvent",
    "Nack",
    "Probe",
    "ProbeReq",
    "Relink",
    "Swim",
    "SwimConfig",
    "SwimOrder",
    "Sync",
    "TellWatchers",
]
