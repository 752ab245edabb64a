"""TEMPORARY stand-in."""

from typing import Any


class WorkerOps:
    def __init__(self, service: Any) -> None:
        self.service = service

    def handle(self, op: str, args: dict[str, Any]) -> Any:
        raise ValueError(op)
