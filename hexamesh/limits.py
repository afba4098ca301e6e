"""Every bound on what the outside can make an agent hold or wait for.

An agent's ports are reachable by anyone, and any holder of the swarm key may
lie. Whatever a client, a peer or an engine can make an agent keep, count or
wait for has a bound here, with its unit and why it is that size; the code
that enforces a bound imports it from this module, and docs/operator.md
lists them all (a test holds the two to each other). The wire format's own
limits (datagram and frame sizes, field lengths) are in ``wire.py`` and
docs/wire.md; the DHT's store limits in ``dht.records.StoreConfig``.
"""

from __future__ import annotations

# -- descriptors and connections (both ports) ---------------------------------

# The agent raises its soft RLIMIT_NOFILE to this (never past the hard limit):
# the usual soft 1,024 is less than the connection bounds below add up to.
# Where the limit stays lower, each port's connection bounds shrink to a
# quarter of it, so the ports run out of places before the agent runs out
# of descriptors (for its files, its engine, its peers).
NOFILE_WANTED = 65536
# Open connections on the API port. At the bound a new client evicts the
# connection idle longest (between requests), else it is refused: idle
# keep-alive sockets cannot lock new clients out.
API_CONNECTIONS = 512
# HTTP connections (signed forwards) on the peer port, same rule.
PEER_HTTP_CONNECTIONS = 512
# Open connections from one IP address on one port; more are refused at once.
# Above the connection pools of common clients (httpx 100, aiohttp 100).
CONNECTIONS_PER_SOURCE = 128
# Accepted frame streams (large peer messages) waiting for a reader; more are refused.
STREAM_BACKLOG = 16
SNIFF_TIMEOUT = 5.0  # s for a new peer-port connection to send its first bytes
HANDSHAKE_TIMEOUT = 3.0  # s for a peer channel's whole handshake, either side: one LAN round trip
ACCEPT_BACKOFF = 0.1  # s an accept loop waits when out of descriptors (as trio's serve_listeners)

# -- HTTP requests (both ports) -------------------------------------------------

MAX_HEAD = 64 * 1024  # bytes of request line and headers; more is 431
MAX_BODY = 1024 * 1024  # bytes of a request body; more is 413
HEAD_TIMEOUT = 10.0  # s from a request's first byte to the end of its head; then 408
READ_TIMEOUT = 30.0  # s from a request's first byte to its last; then 408
IDLE_TIMEOUT = 75.0  # s a keep-alive connection may sit idle (above common client pools' 60 s)
MAX_JSON_DEPTH = 32  # nesting of arrays and objects in a request body; deeper is 400
MAX_MODEL_NAME = 256  # characters of a requested model name; longer is 400
MAX_TOKENS_LIMIT = 32768  # max_tokens above this is refused outright
MAX_CHOICES = 8  # `n` and `best_of`: answers generated for one request
MAX_LOGPROBS = 20  # `logprobs` / `top_logprobs` per token (OpenAI's own bound)
MAX_LIST_ITEMS = 4096  # items of `messages`, a `prompt` list, `stop`, `logit_bias`

# -- answers from upstreams (an engine, or a peer we forward to) ---------------

MAX_RESPONSE_HEAD = 64 * 1024  # bytes of a response head
MAX_RESPONSE_BODY = 64 * 1024 * 1024  # bytes of a non-streamed answer
# Bytes of one incomplete HTTP chunk a relay holds while waiting for its end:
# an engine's SSE event is a few hundred bytes; a chunk that never ends is a
# broken or hostile upstream, failed over like one that died.
MAX_PENDING_CHUNK = 1024 * 1024

# -- what peers say --------------------------------------------------------------

# Incarnations are SWIM's refutation counters (+1 per refutation). A claim
# above this is refused: a counter that reached 2^64 could not be sent.
MAX_INCARNATION = 2**32 - 1
# A claim that *we* are suspect or dead more than this above our own
# incarnation is refused: ours is kept on disk across restarts, so a real
# claim is at most a few refutations ahead, and refuting a forged one would
# spend the counter.
MAX_INCARNATION_JUMP = 1024
# Members a node holds that it only heard of (not its links or shortcuts):
# after a mass failure every survivor holds every death for a while (3,000 at
# 10,000 nodes with 30 % killed). Beyond this the oldest news is dropped
# first. ~700 bytes each, all told: 2.8 MiB at the bound.
MAX_HEARSAY = 4096
# A frame whose proof's counter (the sender's clock) is further than this from
# ours is dropped as stale: agents need clocks within two minutes (NTP keeps
# them within milliseconds). It also bounds how long a frame can be replayed
# to a node that has forgotten its sender (``peerauth``).
MAX_CLOCK_SKEW = 120.0  # s
# Peers whose keys, pair keys and replay windows are kept, and addresses whose
# node's key is known (each an LRU): a link's entry is used every second and
# stays. Each ~1 KiB with its window: 4 MiB at the bound.
AUTH_PEERS = 4096
# Counters a replay window remembers per sender: past this the window's floor
# rises to the oldest forgotten (a sender at over 128 datagrams a second loses
# reordering, not frames that arrive in order).
AUTH_SEEN = 256
# Elections a peer may open here last at most this long (proposals and votes
# carry the time left); the API's own bound.
MAX_ELECTION_TTL = 60.0  # s

# -- payloads peers push (``serve.blobs``) ----------------------------------------

# Bytes of blobs (large job requests and results, ours and others') one agent
# holds on disk; a push past it is refused (507) and goes to the next member.
# 1,024 jobs of 1 MiB, three copies each, spread over the members.
BLOB_BUDGET = 1024 * 1024 * 1024
# Of BLOB_BUDGET, the part one sender's pushes may fill: a key holder that
# pushes junk fills a quarter, not the whole.
BLOB_SHARE = 0.25
# Longest a copy is kept (its maker sets its expiry: the job's life plus its
# retention); a longer expiry is refused.
MAX_BLOB_TTL = 8 * 24 * 3600.0  # s

# -- caches keyed by what clients ask --------------------------------------------

MODEL_CACHE = 256  # models whose DHT lookups are cached; the least recently used goes

# -- logs ---------------------------------------------------------------------------

DROP_WARN_INTERVAL = 60.0  # s between warnings about unopenable datagrams (all senders together)
# Revocations one agent holds (``hexamesh.revocation``): an operator revokes
# machines one by one; more are refused (and logged) rather than grown.
MAX_REVOCATIONS = 4096
# Invites a sponsor holds open at once (``hexamesh.invites``): each is one
# more key a stranger's first handshake message is tried against.
MAX_INVITES = 16
