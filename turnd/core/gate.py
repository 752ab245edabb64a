"""What the core may say to a source that has not authenticated (DESIGN.md "Security defaults").

An unauthenticated answer (a Binding response, a 401 challenge, a 400 to a malformed request)
passes two checks of :mod:`turnd.core.ratelimit`: the source's answer rate (``SourceLimiter``)
before it is built, and its byte credit (``ByteCredit``: bytes answered never exceed bytes
received plus a small credit) once its size is known. TCP and TLS are exempt from the credit:
their handshake proved the source address (RFC 9000 §8.1), so nothing is reflected to a forged
one. Each refusal is a counted drop; a source that authenticates gets its credit back.
"""

from __future__ import annotations

from collections import Counter

from turnd.core.actions import Action, FiveTuple, SendToClient
from turnd.core.ratelimit import ByteCredit, SourceLimiter


class UnauthenticatedGate:
    """The rate and byte-credit checks of unauthenticated answers, counted in ``stats``."""

    def __init__(self, limiter: SourceLimiter, credit: ByteCredit, stats: Counter[str]) -> None:
        self.limiter = limiter
        self.credit = credit
        self.stats = stats

    def may_answer(self, five_tuple: FiveTuple, now: float) -> bool:
        """Whether the source is within its unauthenticated answer rate (a refusal is counted)."""
        if self.limiter.allow(five_tuple.client.host, now):
            return True
        self.stats["drop.unauthenticated_rate"] += 1
        return False

    def pays(self, five_tuple: FiveTuple, received: int, answered: int, now: float) -> bool:
        """Whether the source's byte credit pays ``answered`` bytes for ``received`` (streams
        always); a refusal is counted."""
        if five_tuple.transport.is_stream or self.credit.pay(
            five_tuple.client.host, received, answered, now
        ):
            return True
        self.stats["drop.unauthenticated_credit"] += 1
        return False

    def paid(
        self, five_tuple: FiveTuple, received: int, actions: list[Action], now: float
    ) -> list[Action]:
        """``actions`` answering an unauthenticated request of ``received`` bytes if the credit
        pays for what they send the client, else none."""
        answered = sum(len(a.data) for a in actions if type(a) is SendToClient)
        return actions if self.pays(five_tuple, received, answered, now) else []

    def validated(self, five_tuple: FiveTuple) -> None:
        """The source authenticated: its credit is whole again."""
        self.credit.validated(five_tuple.client.host)
