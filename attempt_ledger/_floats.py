"""Writing floats as upstream does (serde_json 1.0.149, ryu), and JSON text that uses that writer.

Upstream writes the shortest digits that read back to the same double (the digits of Python's
``repr``), in fixed notation with a ``.`` when ``1e-5 <= |x| < 1e16`` and as ``d[.ddd]e+N`` /
``d[.ddd]e-N`` otherwise, without zero padding; ``-0.0`` stays ``-0.0``. ``repr`` differs only
for ``1e-9 <= |x| < 1e-4``: it writes ``1e-05`` (upstream: ``0.00001``) and pads the exponent
(``1e-07``; upstream: ``1e-7``). So JSON text from the stdlib encoder, which uses ``repr``, is
already upstream's unless it contains ``e-0``; :data:`REPR_DIFFERS` is that test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

#: No float whose ``repr`` differs from upstream's text can be in JSON text without this.
REPR_DIFFERS = "e-0"


def format_float(value: float) -> str:
    """Return ``value`` as upstream writes it in JSON.

    :raises ValueError: if ``value`` is NaN or infinite (not JSON), with the stdlib's message.
    """
    text = float.__repr__(value)  # float subclasses too, as the stdlib encoder does
    mantissa, e, exponent = text.partition("e")
    if not e:
        if not math.isfinite(value):
            raise ValueError("Out of range float values are not JSON compliant: " + text)
        return text  # fixed notation, with a "." (repr's fixed range is inside upstream's)
    power = int(exponent)
    if power == -5:  # 1e-5 <= |x| < 1e-4: fixed for upstream, "d.ddde-05" for repr
        sign = "-" if mantissa[0] == "-" else ""
        return f"{sign}0.0000{mantissa.lstrip('-').replace('.', '')}"
    return f"{mantissa}e{'-' if power < 0 else '+'}{abs(power)}"


# The stdlib's pure-Python encoder loop, with a float writer of our choosing: the C encoder has
# no such hook. Same arguments as json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
# sort_keys=True, allow_nan=False) passes it.
_make_iterencode: Callable[..., Callable[[Any, int], Any]] = json.encoder._make_iterencode  # type: ignore[attr-defined]


_iterencode = _make_iterencode(
    None,  # no circular check: callers bound the depth
    json.JSONEncoder().default,  # raises TypeError, as the C encoder's does
    json.encoder.encode_basestring,
    None,
    format_float,
    ":",
    ",",
    True,
    False,
    True,
)


def dump_json(value: object) -> str:
    """Return compact JSON text of ``value``: keys sorted, non-ASCII raw, floats as upstream's.

    The slow path of the payload encoder; the caller checks the value's types and depth first.

    :raises ValueError: if a float is NaN or infinite.
    """
    return "".join(_iterencode(value, 0))
