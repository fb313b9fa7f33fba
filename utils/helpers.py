"""Small helpers shared everywhere: the clock, the money and time serializers, the pagination
block. Imports nothing of ours: models.py stands on it."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

CENT = Decimal("0.01")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(value: datetime | str | None) -> str | None:
    """ISO-8601 in UTC with an explicit offset, the API's one time format (a value read as
    that text already, models.iso_text, as it is)."""
    if value is None or value.__class__ is str:
        return value
    if value.tzinfo is None:  # SQLite hands back naive values; they were stored as UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="seconds")


def to_decimal(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


def money(value: Decimal | int | float | str | None) -> float | None:
    """A JSON number with two decimals: the API's one money format."""
    if value is None:
        return None
    return float(to_decimal(value))


# ISO 4217 currencies with no minor unit or three: gateways want integer minor units.
_ZERO_DECIMAL = {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX",
                 "VND", "VUV", "XAF", "XOF", "XPF"}
_THREE_DECIMAL = {"BHD", "JOD", "KWD", "OMR", "TND"}


def _minor_exponent(currency: str) -> int:
    currency = currency.upper()
    return 0 if currency in _ZERO_DECIMAL else 3 if currency in _THREE_DECIMAL else 2


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Integer minor units for a gateway, computed with Decimal, never floats."""
    exponent = _minor_exponent(currency)
    return int((Decimal(amount) * (Decimal(10) ** exponent)).to_integral_value(ROUND_HALF_UP))


def from_minor_units(amount: int, currency: str) -> Decimal:
    """A gateway's integer minor units as a Decimal amount (the inverse of to_minor_units)."""
    return Decimal(int(amount)).scaleb(-_minor_exponent(currency))


def pagination_meta(page: int, per_page: int, total: int) -> dict[str, Any]:
    pages = math.ceil(total / per_page) if per_page else 0
    return {
        "page": page,
        "per_page": per_page,
        "total": total,
        "pages": pages,
        "has_next": page < pages,
        "has_prev": page > 1,
    }


class Columns:
    """Named values: one model's slice of a Core row. A subclass takes its model's `to_dict`
    (and the properties it reads), so a hot read that selects columns answers what the entity
    would, from the model's one list of fields."""

    def __init__(self, names: tuple[str, ...], values) -> None:
        self.__dict__.update(zip(names, values))


class Written(Sequence):
    """A list in an answer whose items are already written as JSON (`fragments`: each item's
    JSON, in order), read as the items themselves (the fragments parsed, once, on the first
    read) only by what reads them. An answer's body then joins the fragments instead of
    writing the items again: utils/validation.py for a view that declares its body model
    (where tests and the debugger check the join against the model's own writing),
    utils/json_provider.py for any other answer."""

    __slots__ = ("fragments", "_items")

    def __init__(self, fragments: list[bytes]) -> None:
        self.fragments = fragments
        self._items: list | None = None

    def made(self) -> list:
        if self._items is None:
            self._items = [json.loads(fragment) for fragment in self.fragments]
        return self._items

    def json(self) -> bytes:
        return b"[" + b",".join(self.fragments) + b"]"

    def __len__(self) -> int:
        return len(self.fragments)

    def __getitem__(self, index):
        return self.made()[index]

    def __iter__(self):
        return iter(self.made())

    def __eq__(self, other) -> bool:
        if isinstance(other, Written):
            other = other.made()
        return self.made() == other if isinstance(other, list) else NotImplemented

    __hash__ = None  # a list's

    def __repr__(self) -> str:
        return f"Written({self.made()!r})"
