"""Bounds-checked reading of binary evidence.

Every read names the field it reads, so a short or malformed input fails with an
``EvidenceError`` that says which field and at which offset, never with an ``IndexError`` or a
``struct.error`` from deep inside a parser.
"""

from __future__ import annotations

from geode.errors import EvidenceError

__all__ = ["ByteReader"]


class ByteReader:
    """Reads little-endian fields from ``data`` (a ``bytes`` view), starting at ``offset``.

    ``base`` is added to every offset in error messages, so a reader over a sub-structure reports
    offsets in the enclosing evidence.
    """

    __slots__ = ("base", "data", "offset", "what")

    def __init__(self, data: bytes, what: str, *, offset: int = 0, base: int = 0) -> None:
        self.data = data
        self.what = what
        self.offset = offset
        self.base = base

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset

    def error(self, field: str, message: str, offset: int | None = None) -> EvidenceError:
        where = self.offset if offset is None else offset
        return EvidenceError(message, field=field, offset=self.base + where)

    def bytes(self, field: str, size: int) -> bytes:
        if size < 0 or size > self.remaining:
            raise self.error(
                field,
                f"{self.what} truncated: {size} bytes needed, {max(self.remaining, 0)} left",
            )
        start = self.offset
        self.offset += size
        return self.data[start : self.offset]

    def uint(self, field: str, size: int) -> int:
        return int.from_bytes(self.bytes(field, size), "little")

    def u8(self, field: str) -> int:
        return self.uint(field, 1)

    def u16(self, field: str) -> int:
        return self.uint(field, 2)

    def u24(self, field: str) -> int:
        return self.uint(field, 3)

    def u32(self, field: str) -> int:
        return self.uint(field, 4)

    def u64(self, field: str) -> int:
        return self.uint(field, 8)

    def skip(self, field: str, size: int) -> None:
        self.bytes(field, size)

    def seek(self, offset: int) -> None:
        """Moves to an absolute offset within ``data`` (a fixed layout's next field)."""
        self.offset = offset
