"""Names for the JSON documents vitalcast builds and reads back.

Payloads, deltas, problem bodies and API answers are JSON objects whose values are of every JSON
type, nested. A recursive JSON type would make each reader narrow fields whose shape the code that
built them already fixes, so these aliases keep ``Any`` for the values, here and only here. Data
that arrives from outside (request bodies, socket frames, token claims) is typed ``object`` or
``dict[str, object]`` instead, which forces the code to check it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

#: a JSON object we built (or stored): values of any JSON type, see the module docstring
JsonObject: TypeAlias = dict[str, Any]
#: the same, read-only
JsonMapping: TypeAlias = Mapping[str, Any]
