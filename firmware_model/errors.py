"""The model's one exception family. A refusal carries the wire error code, so the device
layer answers with it unchanged; a refused command has changed nothing."""

from __future__ import annotations

from protocol_spec.enums import ErrorCode

__all__ = ["CorruptStateError", "PumpError", "RefusalError"]


class PumpError(Exception):
    """Root of everything the pump model raises."""


class RefusalError(PumpError):
    """A command the pump refuses: ``code`` says why; ``lo``/``hi`` give the range or limit."""

    def __init__(
        self, code: ErrorCode, detail: str, *, field: int = 255, lo: int = 0, hi: int = 0, retry_after_ms: int = 0
    ) -> None:
        super().__init__(f"{code.name}: {detail}")
        self.code = code
        self.detail = detail
        self.field = field
        self.lo = lo
        self.hi = hi
        self.retry_after_ms = retry_after_ms


class CorruptStateError(PumpError):
    """A non-volatile record that passed its CRC but does not make sense: treated as corrupt."""
