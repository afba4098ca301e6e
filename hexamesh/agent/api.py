"""The API port: its listener, its connection bounds, the metrics the agent adds."""

from __future__ import annotations

import contextlib
import json
import logging
import os

import trio

from hexamesh.comb.service import Honeycomb
from hexamesh.comb.swim import MemberState
from hexamesh.config import AgentConfig
from hexamesh.faults import Faults
from hexamesh.limits import API_CONNECTIONS, CONNECTIONS_PER_SOURCE
from hexamesh.net.admission import Admission
from hexamesh.net.base import format_addr
from hexamesh.net.driver import CoreDriver
from hexamesh.net.udp import UdpTransport
from hexamesh.serve.frontdoor import FrontDoor
from hexamesh.serve.metrics import ServeMetrics
from hexamesh.services import Services

log = logging.getLogger(__name__)


def _metrics(
    honeycomb: Honeycomb,
    transport: UdpTransport,
    driver: CoreDriver,
    faults: Faults,
    services: Services,
) -> ServeMetrics:
    metrics = ServeMetrics()

    def alive() -> float:
        return float(sum(s is not MemberState.DEAD for s in honeycomb.members().values()))

    metrics.gauge("hexamesh_peers_alive", "Members held alive or suspect", alive)
    metrics.gauge("hexamesh_comb_links", "Comb links", lambda: len(honeycomb.neighbours()))
    st = transport.stats
    metrics.counter("hexamesh_gossip_datagrams_sent", "Datagrams sent", lambda: st.datagrams_sent)
    metrics.counter("hexamesh_gossip_bytes_sent", "Datagram bytes sent", lambda: st.bytes_sent)
    metrics.counter(
        "hexamesh_gossip_datagrams_received", "Datagrams received", lambda: st.datagrams_received
    )
    metrics.counter(
        "hexamesh_gossip_malformed",
        "Peer messages dropped as malformed",
        lambda: driver.stats.malformed,
    )
    auth = driver.codec.auth.stats
    metrics.labelled(
        "counter",
        "hexamesh_frames_refused",
        "Peer frames whose sender was not proven, by why (unproven, forged, replayed, stale)",
        "reason",
        lambda: {reason: float(n) for reason, n in auth.dropped().items()},
    )
    metrics.labelled(
        "counter",
        "hexamesh_unproven_news",
        "Others' self-claims (dances, refutations) relayed without their node's proof, dropped",
        "kind",
        lambda: {kind: float(n) for kind, n in honeycomb.unproven().items()},
    )
    metrics.counter(
        "hexamesh_updates_refused",
        "Membership news refused (an incarnation out of bounds, hearsay over the cap)",
        lambda: honeycomb.updates_refused,
    )
    metrics.labelled(
        "counter",
        "hexamesh_errors",
        "Units of work that failed and were dropped (a datagram, connection, stream, job...)",
        "component",
        lambda: {c.value: float(n) for c, n in faults.counts.items()},
    )
    metrics.labelled(
        "gauge",
        "hexamesh_service_up",
        "1 while the service runs, 0 while it waits to be restarted",
        "service",
        lambda: {name: float(services.up(name)) for name in services.states()},
    )
    metrics.labelled(
        "counter",
        "hexamesh_service_restarts",
        "Times the service failed and was restarted",
        "service",
        lambda: {name: float(services.restarts(name)) for name in services.states()},
    )
    peer = transport.admission.stats
    metrics.labelled(
        "counter",
        "hexamesh_peer_connections_refused",
        "Connections to the peer port closed at once, by reason",
        "reason",
        lambda: {
            "per_source": float(peer.refused_source),
            "full": float(peer.refused_full),
            "evicted_idle": float(peer.evicted),
            "silent": float(st.silent),
        },
    )
    return metrics


async def _serve_api(
    config: AgentConfig,
    front: FrontDoor,
    services: Services,
    connections: int,
    *,
    task_status: trio.TaskStatus[str],
) -> None:
    """The OpenAI API listener; reports its base URL once bound. Connections
    are admitted per source and in total (``net.admission``)."""
    try:
        listeners = await trio.open_tcp_listeners(config.api_port, host=config.api_host)
    except OSError as e:  # say which port: the peer port fails the same way
        raise OSError(e.errno, f"API {config.api_host}:{config.api_port}: {e.strerror}") from None
    sockname = listeners[0].socket.getsockname()
    host = config.api_host if config.api_host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{format_addr((host, sockname[1]))}/v1"
    if config.api_host not in ("127.0.0.1", "::1", "localhost") and not config.api_keys:
        log.warning(
            "the API listens on %s without API keys: anyone who reaches it may use it",
            config.api_host,
        )
    admission = Admission(
        total=min(API_CONNECTIONS, connections),
        per_source=min(CONNECTIONS_PER_SOURCE, connections),
    )
    stats = admission.stats
    front.metrics.labelled(
        "counter",
        "hexamesh_api_connections_refused",
        "Connections to the API port closed at once, by reason",
        "reason",
        lambda: {
            "per_source": float(stats.refused_source),
            "full": float(stats.refused_full),
            "evicted_idle": float(stats.evicted),
        },
    )

    async def admitted(stream: trio.SocketStream) -> None:
        try:
            source = str(stream.socket.getpeername()[0])
        except OSError:
            source = ""
        ticket = admission.admit(source)
        if ticket is None:
            _refuse(stream)
            await stream.aclose()
            return
        try:
            await front.serve_connection(stream, ticket=ticket)
        finally:
            ticket.release()

    async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.serve_listeners(admitted, listeners)

    log.info("OpenAI API on %s", url)
    task_status.started(url)
    await services.run("api", serve)


_BUSY_BODY = json.dumps(
    {
        "error": {
            "message": "too many connections: retry later",
            "type": "server_error",
            "param": None,
            "code": "overloaded",
        }
    }
).encode()


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_BUSY_BODY), _BUSY_BODY)
)


def _refuse(stream: trio.SocketStream) -> None:
    """Say 503 to a connection over the bounds, best effort: one non-blocking
    write into the socket's empty buffer (never waits, so a flood of refused
    connections holds no descriptor longer than it takes to close it)."""
    with contextlib.suppress(OSError):  # BlockingIOError, a reset: it gets no answer
        os.write(stream.socket.fileno(), _BUSY)
