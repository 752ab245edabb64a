"""TEMPORARY stand-in (not committed) until the views branch lands."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class WorkerInfo:
    slot: int
    pid: int | None
    up: bool
    restarts: int
    started: float | None


class WorkerUnavailable(Exception):
    def __init__(self, slot: int, reason: str) -> None:
        super().__init__(f"worker {slot} is down: {reason}")
        self.slot, self.reason = slot, reason


def raise_remote(slot: int, text: str) -> None:
    raise ValueError(text)


class FanOutOps:
    def __init__(self, calls: Any, started: float) -> None:
        self.calls = calls

    async def reload(self) -> dict[str, Any]:
        return {}

    async def metrics(self) -> str:
        return ""
