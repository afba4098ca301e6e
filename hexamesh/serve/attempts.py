"""One request's way through its candidates: the next step after each outcome (sans-IO).

Theory of operation
-------------------
A request is ranked once (``router.rank``) and tried on at most
``MAX_ATTEMPTS`` of its candidates, in order. :class:`Attempts` holds where it
stands; the driver (the front door, the job runner, the simulator) tells it
what happened and does what it answers:

========================================  =======================================
outcome (``Attempts`` method)             next action
========================================  =======================================
``start``                                 ``Dial`` the first, or ``GiveUp`` (none)
``raced``: a dial race over the next      ``Dial`` the winner (those before it
candidates (RFC 8305 over servers)        were passed over: slower to connect),
                                          or the next after them (none connected)
``refused``: no connection, or it         ``Dial`` the next (a failover), or
failed before answering                   ``GiveUp``
``answered``: a status other than 200     ``PassOn`` the client's own 4xx (when
                                          nothing was sent yet), else as refused
``broke_off``: the answer ended early,    nothing sent yet: as refused; the
stalled, or the server was declared       answer was finished: ``Finish``; else
dead (``sent``: the client holds part     ``Dial`` the next as a *continuation*,
of it)                                    or ``GiveUp`` if it cannot continue
``done``: the whole answer reached the    ``Finish``
client
========================================  =======================================

Every server that failed a request is listed for the shun list
(``take_failed``: tried last for a while, ``shun.Shunned``), and one that
served it is cleared (``Finish.candidate``); the moves to another server are
counted (``take_moves``: failovers before anything was sent, continuations
after). ``GiveUp`` carries the status a
client gets: 502 if some server failed, 503 if there was none to try, and
whether part of the answer already went out (then a stream ends with an
error event, or a hop breaks it off for the node before it to continue).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hexamesh.serve.router import MAX_ATTEMPTS, Candidate

__all__ = [
    "NOT_THE_CLIENTS",
    "Action",
    "Attempts",
    "Dial",
    "Finish",
    "GiveUp",
    "PassOn",
]

# 4xx answers that say nothing about the request itself, so the next server is
# tried: a timeout, a busy server, a peer refusing our forward (401/403: a
# route it does not take), a server that no longer has the model (our view of it was
# stale: the model's existence was checked before routing).
NOT_THE_CLIENTS = frozenset({401, 403, 404, 408, 429})


@dataclass(frozen=True, slots=True)
class Dial:
    """Send the request to ``candidate`` (``attempt``: its place in the ranking).
    ``continuing``: the client holds part of the answer, so this is a
    continuation from the prompt plus what was sent (``sse.continuation``)."""

    candidate: Candidate
    attempt: int
    continuing: bool = False


@dataclass(frozen=True, slots=True)
class PassOn:
    """Give the server's own refusal (a 4xx about the request) to the client."""

    status: int


@dataclass(frozen=True, slots=True)
class Finish:
    """The client has the whole answer, from ``candidate``."""

    candidate: Candidate


@dataclass(frozen=True, slots=True)
class GiveUp:
    status: int  # 502: servers failed; 503: there was none to try
    message: str
    mid_stream: bool  # part of the answer went out already


Action = Dial | PassOn | Finish | GiveUp


@dataclass
class Attempts:
    """The state of one request's attempts (see the module doc)."""

    ranked: Sequence[Candidate]
    what: str = "the request"  # for messages: "`tiny`"
    limit: int = MAX_ATTEMPTS
    errors: list[str] = field(default_factory=list)
    sent: bool = False  # part of the answer reached the client
    failovers: int = 0  # moves to another server before anything was sent
    continuations: int = 0  # moves to another server mid-answer
    _at: int = -1
    _failed: list[bytes] = field(default_factory=list)
    _told: tuple[int, int] = (0, 0)  # failovers and continuations ``take_moves`` gave

    def __post_init__(self) -> None:
        self.tries = list(self.ranked[: self.limit])

    @property
    def current(self) -> Candidate:
        return self.tries[self._at]

    @property
    def attempt(self) -> int:
        """The current candidate's place in the ranking (0: the first choice)."""
        return self._at

    @property
    def more(self) -> bool:
        """Is there a candidate after the current one?"""
        return self._at + 1 < len(self.tries)

    def start(self) -> Dial | GiveUp:
        return self._next()

    def raced(self, winner: int | None, tried: int, why: str = "") -> Dial | GiveUp:
        """A dial race from the current candidate over ``tried`` of them: the
        one at ``winner`` connected first (None: none did, ``why``)."""
        if winner is None:
            for cand in self.tries[self._at : self._at + tried]:
                self._failed.append(cand.node)
            self.errors.append(why)
            self._at += tried - 1
            return self._next()
        if winner == self._at:
            return Dial(self.current, self._at, self.sent)
        for cand in self.tries[self._at : winner]:
            self._failed.append(cand.node)  # passed over: slower to connect
        self._at = winner
        self._count()
        return Dial(self.current, self._at, self.sent)

    def refused(self, why: str) -> Dial | GiveUp:
        """The current server failed before any of its answer went out."""
        self._fail(why)
        return self._next()

    def answered(self, status: int, why: str) -> Dial | GiveUp | PassOn:
        """The current server answered ``status`` (not 200)."""
        if not self.sent and status < 500 and status not in NOT_THE_CLIENTS:
            return PassOn(status)
        return self.refused(why)

    def broke_off(
        self, why: str, *, sent: bool, finished: bool = False, continuable: bool = True
    ) -> Dial | GiveUp | Finish:
        """The current server's answer ended before its end (or it went
        silent, or was declared dead). ``sent``: the client holds some of it
        now; ``finished``: what it holds is the whole answer already;
        ``continuable``: another server can be asked for the rest."""
        self._fail(why)
        self.sent |= sent
        if not sent:
            return self._next()
        if finished:
            return Finish(self.current)
        if not continuable:
            return self._give_up()
        return self._next()

    def done(self) -> Finish:
        return Finish(self.current)

    def take_failed(self) -> list[bytes]:
        """Servers that failed this request since the last call (for the shun list)."""
        out, self._failed = self._failed, []
        return out

    def take_moves(self) -> tuple[int, int]:
        """Failovers and continuations since the last call (for the metrics)."""
        moves = (self.failovers - self._told[0], self.continuations - self._told[1])
        self._told = (self.failovers, self.continuations)
        return moves

    def _fail(self, why: str) -> None:
        self.errors.append(why)
        self._failed.append(self.current.node)

    def _next(self) -> Dial | GiveUp:
        self._at += 1
        if self._at >= len(self.tries):
            return self._give_up()
        self._count()
        return Dial(self.current, self._at, self.sent)

    def _count(self) -> None:
        if self._at:
            if self.sent:
                self.continuations += 1
            else:
                self.failovers += 1

    def _give_up(self) -> GiveUp:
        self._at = len(self.tries)
        detail = "; ".join(self.errors[-self.limit :])
        return GiveUp(
            status=502 if self.errors else 503,
            message=f"every server for {self.what} failed: {detail}"
            if self.errors
            else f"no server for {self.what}",
            mid_stream=self.sent,
        )
