"""The front door: the OpenAI-compatible API every agent serves.

Two listeners share this code. The API port (``--api-port``, 127.0.0.1 by
default) takes clients, who show a bearer API key when keys are configured.
The peer port (the agent's UDP+TCP port; the transport hands over TCP
connections that are not frame streams) takes forwarded requests from other
members inside the peer channel (``net.channel``: a handshake proves both
node keys and the swarm key, then everything is encrypted); plain HTTP there
is refused.

A completion request is checked (``requests``), ranked (``router``) and
sent to the best server: the local vLLM, or a peer one forward away, which
serves it from its own engine. The answer is relayed without parsing, by one
epoll thread for all streams (``pumpthread``). A server that fails before the
first token is replaced transparently by the next candidate; one that dies
mid-stream is replaced by another that continues from the prompt plus the text
already sent (``sse.continuation``), so the client sees one stream. A wait on a
peer the comb declares dead is cut at once (``deathwatch``): a frozen server
sends no reset. When nobody is left, a
stream ends with an OpenAI-style error event, a plain request with a 5xx: no
request hangs. Limits and behaviour: docs/serving.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any, Protocol

import trio

from hexamesh.faults import Component, Faults
from hexamesh.identity import short_id
from hexamesh.limits import SNIFF_TIMEOUT
from hexamesh.net.admission import Ticket
from hexamesh.net.base import Addr
from hexamesh.net.channel import ChannelKeys, PeerStream, accept, is_channel
from hexamesh.net.noise import PREAMBLE, ChannelError
from hexamesh.serve import sse
from hexamesh.serve.affinity import H_PREFIX, AffinityTable, Marks, marks_of, parse_marks
from hexamesh.serve.attempts import Action, Attempts, Dial, Finish, GiveUp, PassOn
from hexamesh.serve.deathwatch import DeathWatch
from hexamesh.serve.http import HttpConnection, Request, response_head
from hexamesh.serve.jobs import JobFailed
from hexamesh.serve.metrics import ServeMetrics
from hexamesh.serve.peerroute import PeerRoute, RouteError, read_route, route_headers
from hexamesh.serve.priority import (
    H_PRIORITY,
    LowGate,
    PriorityPolicy,
    SlotTimeout,
    engine_body,
    of_client,
    of_peer,
)
from hexamesh.serve.pumpthread import Outcome, PumpThread, StreamJob
from hexamesh.serve.relay import (
    STALL_TIMEOUT,
    DialError,
    Peer,
    UpstreamError,
    UpstreamResponse,
    dial_first,
    open_upstream,
    read_body,
    request_bytes,
)
from hexamesh.serve.requests import ApiError, CompletionRequest, parse_completion
from hexamesh.serve.router import DEFAULT_POLICY, Candidate, Priority, RoutingPolicy, rank
from hexamesh.serve.shun import Shunned
from hexamesh.serve.upstreampool import Upstream, UpstreamPool
from hexamesh.serve.view import SwarmView

__all__ = ["SERVED_ADDR", "SERVED_BY", "FrontDoor", "JobsApi"]

log = logging.getLogger(__name__)

TOKENIZE_TIMEOUT = 5.0  # s; counting a continuation's text, once per continuation
_CONTINUES = b'"' + sse.CONTINUES.encode() + b'"'
SERVED_BY = "x-hexamesh-served-by"  # node id (hex) of the agent whose engine answered
SERVED_ADDR = "x-hexamesh-server"  # that agent's peer address
COMPLETION_PATHS = {"/v1/completions": False, "/v1/chat/completions": True}  # path -> chat


class BrokenStream(Exception):
    """A forwarded stream we could not finish: the connection is cut, not ended."""


class _Cut:
    """A death verdict for the server of a rewritten stream: cancels the read
    in progress, never a write to the client (a chunk half written would
    break the stream's framing)."""

    def __init__(self) -> None:
        self.dead = False
        self.scope: trio.CancelScope | None = None

    def __call__(self) -> None:
        self.dead = True
        if self.scope is not None:
            self.scope.cancel()


class JobsApi(Protocol):
    """An API mounted on the front door (jobs, placements): True if it answered."""

    async def handle(self, request: Request, conn: HttpConnection) -> bool: ...


class FrontDoor:
    def __init__(
        self,
        *,
        view: SwarmView,
        keys: ChannelKeys,
        address: str,
        api_keys: tuple[str, ...] = (),
        admin_keys: tuple[str, ...] = (),
        metrics_keys: tuple[str, ...] = (),
        engine_key: str | None = None,
        on_invite: Callable[[bytes], bytes | None] | None = None,
        metrics: ServeMetrics | None = None,
        clock: Callable[[], float] = time.time,
        faults: Faults | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
        routing: RoutingPolicy = DEFAULT_POLICY,
        priorities: PriorityPolicy | None = None,
        engine_slots: Callable[[str], int] | None = None,
    ) -> None:
        self.view = view
        self.routing = routing  # the router's weights and levels ([policy])
        self.priorities = priorities or PriorityPolicy()
        # batch slots of our engine's server of a model (None: no gate for low requests)
        self._engine_slots = engine_slots
        self.low_gate = LowGate(self.priorities.low_reserve)
        self.affinity = AffinityTable(clock)  # which server served which prompt prefix
        self.inflight: dict[bytes, int] = {}  # node -> our requests open at it now
        self.faults = faults or Faults()
        self._health = health  # what /health adds (the services' state)
        self.keys = keys  # our node key and the swarm's: the peer channel's both ends
        self.address = address  # our peer address, reported as SERVED_ADDR
        self.api_keys = frozenset(api_keys)
        self.admin_keys = frozenset(admin_keys)  # operators': admin calls, and a client's too
        self.metrics_keys = frozenset(metrics_keys)  # /metrics needs one (or an admin key)
        # an invite's secret -> what its holder is sent (None: used up); the
        # channel of an invite's holder serves nothing else
        self._on_invite = on_invite
        self.invites_redeemed = 0
        # Our engines' API key (vLLM's VLLM_API_KEY): only this agent knows it,
        # so local users cannot reach the engine around the API keys.
        self._engine_auth = [("authorization", f"Bearer {engine_key}")] if engine_key else []
        self.metrics = metrics or ServeMetrics()
        # (prefix, api, for clients, for peers, admin key only)
        self._mounts: list[tuple[str, JobsApi, bool, bool, bool]] = []
        self.pumps = PumpThread(self.faults)  # the per-token relay loop (its own thread)
        self.upstreams = UpstreamPool()  # idle keep-alive connections to engines and peers
        self._clock = clock
        self.shunned = Shunned()  # servers that failed lately: tried last
        self.deaths = DeathWatch()  # waits on peers, cut when the comb declares one dead
        pool = self.upstreams
        self.metrics.gauge(
            "hexamesh_upstream_idle_connections",
            "Idle kept-alive upstream connections",
            pool.__len__,
        )
        self.metrics.counter(
            "hexamesh_upstream_reused",
            "Requests sent on a kept-alive upstream connection",
            lambda: pool.stats.reused,
        )
        self.metrics.counter(
            "hexamesh_upstream_stale",
            "Kept-alive upstream connections found closed by the server",
            lambda: pool.stats.stale,
        )
        self.channels_refused = 0  # peer-port connections whose handshake failed
        self.channels_accepted = 0  # peer channels whose handshake finished here
        self.metrics.counter(
            "hexamesh_peer_channels_accepted",
            "Peer channels (encrypted forwards from members) accepted on the peer port",
            lambda: self.channels_accepted,
        )
        self.metrics.counter(
            "hexamesh_peer_channels_refused",
            "Peer-port connections refused at the handshake (no member, wrong key, malformed)",
            lambda: self.channels_refused,
        )
        deaths = self.deaths
        self.metrics.counter(
            "hexamesh_requests_cut_by_verdict",
            "Waits on a peer cut because the comb declared it dead (then failed over)",
            lambda: deaths.cut,
        )
        affinity = self.affinity
        self.metrics.counter(
            "hexamesh_prefix_affinity_hits",
            "Requests routed with a server known to hold part of their prompt",
            lambda: affinity.hits,
        )
        self.metrics.counter(
            "hexamesh_prefix_affinity_misses",
            "Requests with a prompt long enough for affinity whose prefix no server held",
            lambda: affinity.misses,
        )

    def server_died(self, node: bytes) -> None:
        """The comb declared ``node`` dead: requests waiting on it move on now."""
        self.affinity.forget(node)
        if self.deaths.dead(node):
            log.info("server %s declared dead: its requests move on", short_id(node))

    def _watch(
        self, cand: Candidate, cut: Callable[[], None]
    ) -> contextlib.AbstractContextManager[None]:
        """While in it, a verdict that ``cand`` is dead calls ``cut`` (a local
        engine is never watched: it is us)."""
        if cand.local:
            return contextlib.nullcontext()
        return self.deaths.waiting_on(cand.node, cut)

    @contextlib.contextmanager
    def _unless_declared_dead(self, cand: Candidate) -> Iterator[None]:
        """Run the body, which only reads from or writes to ``cand``; if the comb
        declares it dead meanwhile, cancel the body and raise UpstreamError."""
        with trio.CancelScope() as scope, self._watch(cand, scope.cancel):
            yield
        if scope.cancelled_caught:
            raise UpstreamError(f"{short_id(cand.node)} was declared dead")

    def close(self) -> None:
        """Close the pooled upstream connections (streams in flight are not touched;
        the relay thread is a daemon that lives as long as the process)."""
        self.upstreams.close()

    # -- connections ------------------------------------------------------

    async def serve_peer(
        self, stream: trio.SocketStream, first: bytes = b"", *, ticket: Ticket | None = None
    ) -> None:
        """A connection on the peer port: the peer channel's handshake, then
        HTTP inside it (plain HTTP is answered, with 403). Never raises."""
        if not first:
            with (
                trio.move_on_after(SNIFF_TIMEOUT),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                first = await stream.receive_some(len(PREAMBLE))
        if not is_channel(first):
            await self.serve_connection(stream, first, peer=True, ticket=ticket)
            return
        try:
            channel = await accept(stream, first, self.keys)
        except (ChannelError, OSError, trio.BrokenResourceError) as e:
            self.channels_refused += 1
            log.debug("peer channel refused: %s", e)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        self.channels_accepted += 1
        if channel.invite is not None:
            await self._admit(channel)
            return
        await self.serve_connection(channel, peer=True, ticket=ticket)

    async def _admit(self, channel: PeerStream) -> None:
        """A joiner came with an invite: send it the swarm's keys (once per
        use of the invite), then close."""
        assert channel.invite is not None
        answer = None if self._on_invite is None else self._on_invite(channel.invite)
        try:
            if answer is not None:
                with trio.fail_after(SNIFF_TIMEOUT):
                    await channel.send_all(answer)
                self.invites_redeemed += 1
                log.info("admitted node %s with an invite", short_id(channel.peer))
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as e:
            log.info("an invite's holder went away: %s", e)
        finally:
            with trio.CancelScope(shield=True):
                await channel.aclose()

    async def serve_connection(
        self,
        stream: trio.SocketStream | PeerStream,
        initial: bytes = b"",
        *,
        peer: bool = False,
        ticket: Ticket | None = None,
    ) -> None:
        """Answer requests on one connection until the client leaves (never
        raises). ``ticket``: its place on the port (``net.admission``)."""
        conn = HttpConnection(stream, initial, ticket)
        try:
            while not conn.closed:
                try:
                    request = await conn.next_request()
                except ApiError as e:
                    await conn.respond_error(e, keep_alive=False)
                    break
                if request is None:
                    break
                await self._answer(conn, request, peer=peer)
                if not request.keep_alive:
                    break
        except (
            BrokenPipeError,
            ConnectionError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ):
            pass  # the client left; nothing of ours is lost
        except BrokenStream as e:
            log.info("cut a forwarded stream short: %s", e)
        except Exception as e:
            self.faults.caught(Component.FRONTDOOR, e, "a connection")
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()

    async def _answer(self, conn: HttpConnection, request: Request, *, peer: bool) -> None:
        endpoint = request.path if request.path in _ENDPOINTS else "other"
        started = trio.current_time()
        status = 500
        try:
            status = await self._route(conn, request, peer=peer)
        except ApiError as e:
            status = e.status
            await conn.respond_error(e, keep_alive=request.keep_alive)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(trio.current_time() - started)

    def _authorize(self, conn: HttpConnection, request: Request, *, peer: bool) -> PeerRoute | None:
        """The route of a peer's request, None for a client; raises ApiError."""
        if conn.peer is not None:
            try:
                return read_route(request.headers, conn.peer)
            except RouteError as e:
                raise ApiError(403, f"peer request refused: {e}", type="permission_error") from None
        if peer:
            raise ApiError(
                403,
                "the peer port takes the peer channel of swarm members only",
                type="permission_error",
            )
        if self.api_keys:
            key = request.bearer
            if key not in self.api_keys and key not in self.admin_keys:
                raise ApiError(
                    401,
                    "missing or wrong API key (send `Authorization: Bearer <key>`)",
                    type="authentication_error",
                    code="invalid_api_key",
                    headers=(("www-authenticate", "Bearer"),),
                )
        return None

    def _authorize_admin(self, request: Request) -> None:
        """An admin call: an admin key, whatever the client keys; raises ApiError."""
        if not self.admin_keys:
            raise ApiError(
                403,
                "this agent takes no admin calls: start it with an admin key (--admin-key-file)",
                type="permission_error",
                code="no_admin_key",
            )
        if request.bearer not in self.admin_keys:
            raise ApiError(
                401 if not request.headers.get("authorization") else 403,
                "an admin call needs an admin key (`Authorization: Bearer <admin key>`); "
                "a client's API key is not one",
                type="permission_error",
                code="admin_key_required",
                headers=(("www-authenticate", "Bearer"),),
            )

    async def _route(self, conn: HttpConnection, request: Request, *, peer: bool) -> int:
        path, method = request.path, request.method
        if path == "/health" and method == "GET" and not peer:
            body = {"status": "ok", "node": self.view.node.hex(), "address": self.address}
            if self._health is not None:
                body |= self._health()
            await conn.respond(200, json.dumps(body).encode(), keep_alive=request.keep_alive)
            return 200
        if path == "/metrics" and method == "GET" and not peer:
            if self.metrics_keys and request.bearer not in self.metrics_keys | self.admin_keys:
                raise ApiError(
                    401,
                    "/metrics needs a metrics key (`Authorization: Bearer <key>`)",
                    type="authentication_error",
                    code="invalid_api_key",
                    headers=(("www-authenticate", "Bearer"),),
                )
            await conn.respond(
                200,
                self.metrics.render(),
                content_type="text/plain; version=0.0.4; charset=utf-8",
                keep_alive=request.keep_alive,
            )
            return 200
        route = self._authorize(conn, request, peer=peer)
        if path in COMPLETION_PATHS:
            if method != "POST":
                raise ApiError(405, f"{path} takes POST")
            req = parse_completion(request.body, chat=COMPLETION_PATHS[path])
            return await self.complete(conn, request, req, route)
        if path == "/v1/models":
            if method != "GET":
                raise ApiError(405, "/v1/models takes GET")
            await self.view.refresh(None)
            data = [
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "hexamesh",
                    "servers": len(nodes),
                }
                for name, nodes in sorted(self.view.models().items())
            ]
            listing = json.dumps({"object": "list", "data": data}).encode()
            await conn.respond(200, listing, keep_alive=request.keep_alive)
            return 200
        for prefix, api, clients, peers, admin in self._mounts:
            if not (peers if route is not None else clients) or not path.startswith(prefix):
                continue
            if admin:
                self._authorize_admin(request)
            if await api.handle(request, conn):
                return 200
        raise ApiError(404, f"no such endpoint: {method} {path}", code="not_found")

    def mount(
        self,
        prefix: str,
        api: JobsApi,
        *,
        clients_only: bool = False,
        peers_only: bool = False,
        admin: bool = False,
    ) -> None:
        """Serve the paths under ``prefix`` with ``api`` (jobs, placements), as a
        web framework mounts a sub-application. The jobs API runs its work
        through this front door: it cannot be built before it, so it is mounted
        when the agent is wired. ``clients_only``: not on the peer channel;
        ``peers_only``: on the peer channel only; ``admin``: for an admin key
        only."""
        self._mounts.append((prefix, api, not peers_only, not clients_only, admin))

    # -- completions ------------------------------------------------------

    async def known_or_404(self, model: str) -> list[Candidate]:
        """The candidates for ``model`` (none when only the DHT's index knows
        it); raise 404 (listing the models served) unless the swarm serves it."""
        cands = self.view.candidates(model)
        if cands and self.view.refresh_soon(model):  # a thin view's backups: fresh ones for later
            return cands
        await self.view.refresh(model)
        cands = self.view.candidates(model)
        if cands:
            return cands
        await self.view.refresh(None)
        known = sorted(self.view.models())
        if model in known:
            return cands
        raise ApiError(
            404,
            f"The model `{model}` does not exist in this swarm; models served: "
            + (", ".join(known) if known else "none yet"),
            param="model",
            code="model_not_found",
        )

    def ranked(
        self,
        model: str,
        route: PeerRoute | None,
        priority: Priority = Priority.MEDIUM,
        cands: list[Candidate] | None = None,  # the view's, when the caller has them already
        marks: Marks | None = None,
    ) -> list[Candidate]:
        path = (*route.path, self.view.node) if route else (self.view.node,)
        return rank(
            self.shunned.apply(
                self.view.candidates(model) if cands is None else cands, self._clock()
            ),
            path=path,
            forwards=route.forwards if route else 0,
            priority=priority,
            ranker=self.view.node,
            policy=self.routing,
            cached=self.affinity.lookup(marks) if marks is not None else None,
            salt=marks.root if marks is not None else b"",
            inflight=self.inflight,
        )

    def _note(self, attempts: Attempts) -> None:
        """What the core's last step says for everyone: servers that failed go
        to the back of the line for a while; moves to another server count."""
        now = self._clock()
        for node in attempts.take_failed():
            self.shunned.failed(node, now)
        failovers, continuations = attempts.take_moves()
        self.metrics.failovers.inc(failovers)
        self.metrics.continuations.inc(continuations)

    async def _race(
        self, attempts: Attempts, action: Dial
    ) -> tuple[Dial | GiveUp, Upstream | None]:
        """Race connections to the peers from ``action``'s on (up to a local
        engine or a peer with no known address), RFC 8305 style
        (``dial_first``): the action for the first to connect (the core
        passes over those before it), and its new connection (None: a pooled
        one is taken, or the address is unknown and ``_open_peer`` says so)."""
        run: list[Candidate] = []
        addrs: list[Addr] = []
        peers: list[Peer] = []
        for cand in attempts.tries[action.attempt :]:
            addr = None if cand.local else self.view.address(cand.node)
            if addr is None:
                break
            run.append(cand)
            addrs.append(addr)
            peers.append(Peer(cand.node, self.keys))
        if not run:
            return action, None
        try:
            first, stream = await dial_first(addrs, self.upstreams, peers=peers)
        except DialError as e:
            return attempts.raced(None, e.tried, str(e)), None
        for cand in run[:first]:
            log.info("server %s passed over: slower to connect", short_id(cand.node))
        return attempts.raced(action.attempt + first, len(run)), stream

    async def _dial(
        self,
        attempts: Attempts,
        action: Dial,
        target: str,
        body: bytes,
        route: PeerRoute | None,
        model: str,
        priority: Priority = Priority.MEDIUM,
        marks: Marks | None = None,
    ) -> tuple[Action, UpstreamResponse | None]:
        """Send the request as ``action`` says (a peer after a dial race): the
        response head, or the next action when nobody could be reached."""
        stream = None
        if not action.candidate.local:
            raced, stream = await self._race(attempts, action)
            if not isinstance(raced, Dial):
                return raced, None
            action = raced
        cand = action.candidate
        try:
            if cand.local:
                url = self.view.local_url(model)
                up = await self._open_local(target, body, url, priority, model)
            else:
                with self._unless_declared_dead(cand):
                    up = await self._open_peer(cand, target, body, route, stream, priority, marks)
            return action, up
        except UpstreamError as e:
            log.info("server %s failed before answering: %s", short_id(cand.node), e)
            return attempts.refused(str(e)), None

    @contextlib.contextmanager
    def _open_at(self, ranked: list[Candidate]) -> Iterator[None]:
        """Count a request at its first choice while it runs (``inflight``):
        counted when chosen, so that requests arriving together see each
        other before any has reached its server."""
        node = ranked[0].node if ranked else None
        if node is not None:
            self.inflight[node] = self.inflight.get(node, 0) + 1
        try:
            yield
        finally:
            if node is not None:
                left = self.inflight.get(node, 1) - 1
                if left > 0:
                    self.inflight[node] = left
                else:
                    self.inflight.pop(node, None)

    async def _open_peer(
        self,
        cand: Candidate,
        target: str,
        body: bytes,
        route: PeerRoute | None,
        stream: Upstream | None = None,
        priority: Priority = Priority.MEDIUM,
        marks: Marks | None = None,
    ) -> UpstreamResponse:
        addr = self.view.address(cand.node)
        if addr is None:
            if stream is not None:
                await stream.aclose()
            raise UpstreamError(f"no address known for {short_id(cand.node)}")

        headers = route_headers(self.view.node, route)
        if priority is not Priority.MEDIUM:
            headers.append((H_PRIORITY, priority))
        if marks is not None:
            headers.append((H_PREFIX, marks.header()))
        request = request_bytes("POST", *addr, target, body, headers, keep_alive=True)
        self.metrics.forwards.inc()
        peer = Peer(cand.node, self.keys)
        return await open_upstream(addr[0], addr[1], request, self.upstreams, stream, peer)

    async def _open_local(
        self,
        target: str,
        body: bytes,
        url: str | None,
        priority: Priority = Priority.MEDIUM,
        model: str = "",
    ) -> UpstreamResponse:
        if url is None:
            raise UpstreamError("the local engine does not serve this model (any more)")
        hostport = url.split("://", 1)[-1].rstrip("/")
        host, _, port = hostport.rpartition(":")
        if _CONTINUES in body:  # a byte search: the hot path parses nothing
            body = await self._settle_continuation(host, int(port), body)
        if not self.priorities.scheduling:
            return await self._post_local(host, int(port), target, body)
        body = engine_body(body, priority)
        if priority is not Priority.LOW or self._engine_slots is None or not model:
            return await self._post_local(host, int(port), target, body)
        try:
            release = await self.low_gate.enter(model, self._engine_slots(model))
        except SlotTimeout as e:
            raise UpstreamError(str(e)) from None
        try:
            up = await self._post_local(host, int(port), target, body)
        except BaseException:
            release()
            raise
        up.on_close = release  # the slot is free when the answer is over
        return up

    async def _post_local(self, host: str, port: int, target: str, body: bytes) -> UpstreamResponse:
        """POST to our engine over a pooled connection."""
        request = request_bytes(
            "POST", host, port, target, body, self._engine_auth, keep_alive=True
        )
        return await open_upstream(host, port, request, self.upstreams)

    async def _settle_continuation(self, host: str, port: int, body: bytes) -> bytes:
        """A continuation about to reach our engine: count the text the client
        already has in the engine's own tokens (vLLM's /tokenize), so that
        ``max_tokens`` holds exactly (events undercount: vLLM merges tokens
        into one event when its frontend falls behind)."""
        try:
            request = json.loads(body)
        except ValueError:
            return body  # not ours: the engine will say what is wrong
        marker = request.get(sse.CONTINUES) if isinstance(request, dict) else None
        if not isinstance(marker, dict):
            return body
        count: int | None = None
        ask = {"model": request.get("model"), "prompt": str(marker.get("text") or "")}
        payload = json.dumps({**ask, "add_special_tokens": False}).encode()
        try:
            with trio.fail_after(TOKENIZE_TIMEOUT):
                up = await self._post_local(host, port, "/tokenize", payload)
                try:
                    answer = json.loads(await read_body(up)) if up.status == 200 else None
                finally:
                    await up.aclose()
            if isinstance(answer, dict) and isinstance(answer.get("count"), int):
                count = answer["count"]
            else:
                log.info("no token count from the engine: max_tokens stays a bound")
        except (UpstreamError, trio.TooSlowError, ValueError) as e:
            log.info("could not count a continuation's tokens (%s): max_tokens stays a bound", e)
        return json.dumps(sse.settle_continuation(request, count)).encode()

    def _served_headers(self, cand: Candidate, up: UpstreamResponse) -> list[tuple[str, str]]:
        if cand.local:
            return [(SERVED_BY, self.view.node.hex()), (SERVED_ADDR, self.address)]
        return [(h, up.headers[h]) for h in (SERVED_BY, SERVED_ADDR) if h in up.headers]

    async def complete(
        self,
        conn: HttpConnection,
        request: Request,
        req: CompletionRequest,
        route: PeerRoute | None,
    ) -> int:
        """Serve one completion: route, relay, fail over (the moves are the
        ``attempts`` core's); returns the status sent."""
        if route is None and sse.CONTINUES in req.body:
            raise ApiError(
                400,
                f"`{sse.CONTINUES}` is reserved for the swarm's own continuations",
                param=sse.CONTINUES,
            )
        priority = self._priority(request, req, route)
        marks = self._marks(req, route, request.headers)
        cands = await self.known_or_404(req.model)
        ranked = self.ranked(req.model, route, priority, cands, marks)
        if not ranked:
            raise ApiError(
                503,
                f"no live server for `{req.model}` can take this request here "
                f"(forwarded {route.forwards if route else 0} times already)",
                type="service_unavailable",
            )
        attempts = Attempts(ranked, what=f"`{req.model}`")
        try:
            with self._open_at(ranked):
                return await self._serve(conn, request, req, route, attempts, priority, marks)
        finally:
            self._note(attempts)

    def _marks(
        self, req: CompletionRequest, route: PeerRoute | None, headers: Mapping[str, str]
    ) -> Marks | None:
        """The prompt's prefix checkpoints (``affinity``): a client's (or a
        job's) hashed here, a forward's as its sender sent them."""
        if self.routing.weight_affinity <= 0:
            return None
        if route is not None:
            return parse_marks(headers.get(H_PREFIX))
        return marks_of(req.body, req.chat)

    def _served(self, node: bytes, marks: Marks | None) -> None:
        self.shunned.served(node)
        if marks is not None:
            self.affinity.learn(marks, node)

    def _priority(
        self, request: Request, req: CompletionRequest, route: PeerRoute | None
    ) -> Priority:
        if route is not None:  # the entry agent decided
            return of_peer(request.headers)
        admin = bool(self.admin_keys) and request.bearer in self.admin_keys
        try:
            priority = of_client(request.headers, req.body, self.priorities, admin=admin)
        except ValueError:
            raise ApiError(
                400, f"`{H_PRIORITY}` must be high, medium or low", param=H_PRIORITY
            ) from None
        self.metrics.priorities.labels(priority).inc()
        return priority

    async def _serve(
        self,
        conn: HttpConnection,
        request: Request,
        req: CompletionRequest,
        route: PeerRoute | None,
        attempts: Attempts,
        priority: Priority = Priority.MEDIUM,
        marks: Marks | None = None,
    ) -> int:
        body = request.body
        sent: list[bytes] = []  # chunked bytes the client holds (streams)
        done: sse.Progress | None = None  # what the client held when a stream first broke
        action: Action = attempts.start()
        while isinstance(action, Dial):
            self._note(attempts)
            action, up = await self._dial(
                attempts, action, request.target, body, route, req.model, priority, marks
            )
            self._note(attempts)  # (a race passes over the slower at once)
            if up is None:
                continue
            cand = attempts.current
            try:
                if up.status != 200:
                    if marks is not None and 400 <= up.status < 500:  # too long for it, say
                        self.affinity.forget(cand.node, marks)
                    action = attempts.answered(
                        up.status, f"{short_id(cand.node)} answered {up.status}"
                    )
                    if isinstance(action, PassOn):
                        data = await read_body(up)
                        ctype = up.headers.get("content-type", "application/json")
                        await conn.respond(
                            up.status, data, content_type=ctype, keep_alive=request.keep_alive
                        )
                        return up.status
                    continue
                served = self._served_headers(cand, up)
                if not req.stream:
                    with self._unless_declared_dead(cand):
                        data = await read_body(up)
                    await conn.respond(
                        200, data, headers=tuple(served), keep_alive=request.keep_alive
                    )
                    action = attempts.done()
                    break
                head = None if sent else self._stream_head(served, request.keep_alive)
                if done is None:
                    job = StreamJob(
                        up_fd=up.fd,
                        client_fd=conn.fd,
                        chunked=up.chunked,
                        head=head,
                        first=up.rest,
                        stall_timeout=STALL_TIMEOUT,
                        sent=sent,
                        up_open=up.opener,
                        client_seal=conn.sealer,
                    )
                    with self._watch(cand, partial(self.pumps.abandon, job)):
                        outcome = await self.pumps.relay(job)
                    if outcome is Outcome.CLIENT_GONE:
                        raise BrokenPipeError("the client left mid-stream")
                    ok = outcome is Outcome.DONE
                    # past the last chunk with nothing after it: the connection can carry another
                    up.consumed = ok and up.chunked and not job.scanner.pending
                    up.consumed &= not (job.up_open and job.up_open.pending)
                else:
                    cut = _Cut()
                    with self._watch(cand, cut):
                        ok = await self._relay_rewritten(conn, up, sent, done, req.chat, head, cut)
            except UpstreamError as e:
                action = attempts.refused(str(e))
                continue
            finally:
                await up.aclose()
            if ok:
                events = sum(c.count(b"data:") - c.count(b"data: [DONE]") for c in sent)
                self.metrics.tokens.inc(events)  # a token per event, or more (merged)
                action = attempts.done()
                break
            why = f"{short_id(cand.node)} broke off mid-answer"
            if not sent:
                action = attempts.broke_off(why, sent=False)
                continue
            done = sse.progress(b"".join(sent), chat=req.chat)
            cont = None if done.finished else sse.continuation(req, done)
            action = attempts.broke_off(
                why, sent=True, finished=done.finished, continuable=cont is not None
            )
            if isinstance(action, Finish):  # the answer was whole: only its end was missing
                await conn.send(sse.LAST_CHUNK)
                return 200
            if cont is not None:
                body = json.dumps(cont).encode()
        if isinstance(action, Finish):
            self._served(action.candidate.node, marks)
            return 200
        assert isinstance(action, GiveUp)
        if action.mid_stream and route is not None:
            # We are a hop: break the stream off, so the peer before us (which
            # has candidates of its own) continues it; an error event would end it.
            raise BrokenStream(action.message)
        if (
            action.mid_stream
        ):  # the stream has begun: end it with an error event the client can read
            err = ApiError(502, action.message, type="server_error")
            await conn.send(sse.chunk(b"data: " + err.body() + b"\n\n") + sse.LAST_CHUNK)
            return 502
        raise ApiError(action.status, action.message, type="server_error")

    # -- jobs -----------------------------------------------------------------

    def busy(self, model: str) -> bool:
        """Is every server of ``model`` above the load a low-priority job may add to?"""
        cands = self.view.candidates(model)
        return bool(cands) and all((c.load or 0.0) > self.routing.low_max_load for c in cands)

    async def fetch(self, req: CompletionRequest, priority: Priority) -> tuple[bytes, str]:
        """One non-streamed answer through the router, with failover: (body, served-by)."""
        try:
            cands = await self.known_or_404(req.model)
        except ApiError as e:
            raise UpstreamError(e.message) from None
        target = "/v1/chat/completions" if req.chat else "/v1/completions"
        body = json.dumps({**req.body, "stream": False}).encode()
        marks = self._marks(req, None, {})
        ranked = self.ranked(req.model, None, priority, cands, marks)
        attempts = Attempts(ranked, what=f"`{req.model}`")
        with self._open_at(ranked):
            try:
                action: Action = attempts.start()
                while isinstance(action, Dial):
                    self._note(attempts)
                    action, up = await self._dial(
                        attempts, action, target, body, None, req.model, priority, marks
                    )
                    self._note(attempts)
                    if up is None:
                        continue
                    cand = attempts.current
                    try:
                        if up.status != 200:
                            action = attempts.answered(
                                up.status, f"{short_id(cand.node)} answered {up.status}"
                            )
                            if isinstance(action, PassOn):
                                detail = (await read_body(up))[:500].decode("utf-8", "replace")
                                raise JobFailed(
                                    f"server refused the request ({up.status}): {detail}"
                                )
                            continue
                        with self._unless_declared_dead(cand):
                            data = await read_body(up)
                        served = dict(self._served_headers(cand, up)).get(
                            SERVED_BY, cand.node.hex()
                        )
                        self._served(cand.node, marks)
                        return data, served
                    except UpstreamError as e:
                        action = attempts.refused(str(e))
                    finally:
                        await up.aclose()
            finally:
                self._note(attempts)
        assert isinstance(action, GiveUp)
        raise UpstreamError(action.message)

    def _stream_head(self, served: list[tuple[str, str]], keep_alive: bool) -> bytes:
        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("transfer-encoding", "chunked"),
            ("cache-control", "no-cache"),
            *served,
        ]
        if not keep_alive:
            headers.append(("connection", "close"))
        return response_head(200, headers)

    async def _relay_rewritten(
        self,
        conn: HttpConnection,
        up: UpstreamResponse,
        sent: list[bytes],
        done: sse.Progress,
        chat: bool,
        head: bytes | None,
        cut: _Cut,
    ) -> bool:
        """The slow path after a mid-stream failure: parse, rewrite and re-frame
        events. False: the server broke off (or ``cut`` says it was declared dead)."""
        scanner = sse.ChunkScanner()
        tail = b""
        data = up.rest
        while True:
            try:
                whole = scanner.feed(data) if up.chunked else sse.chunk(data)
            except sse.ChunkError as e:
                log.info("a continuation's server sent a broken stream: %s", e)
                return False
            if whole:
                tail += sse.dechunk(whole)
                blocks = tail.split(b"\n\n")
                tail = blocks.pop()
                out = b""
                for block in blocks:
                    for payload in sse.events(block + b"\n\n"):
                        new = sse.rewrite(payload, done, chat=chat)
                        if new is not None:
                            out += sse.chunk(b"data: " + new + b"\n\n")
                if out:
                    await conn.send(out if head is None else head + out)
                    head = None
                    sent.append(out)
            if scanner.done:
                await conn.send(sse.LAST_CHUNK)
                return True
            if cut.dead:
                return False
            try:
                with trio.CancelScope() as cut.scope, trio.fail_after(STALL_TIMEOUT):
                    data = await up.stream.receive_some(65536)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError):
                return False
            finally:
                cut.scope = None
            if cut.dead:
                return False
            if not data:
                if not up.chunked:
                    await conn.send(sse.LAST_CHUNK)
                    return True
                return False


_ENDPOINTS = {
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/health",
    "/metrics",
    "/v1/jobs",
    "/v1/placements",
}
