"""The data layer's name for :class:`dhrd.errors.DataError` (the one error type for bad
input), where the data modules and their tests have always imported it."""

from __future__ import annotations

from ..errors import DataError

__all__ = ["DataError"]
