"""The hot paths' techniques, each explained once here; bench/hotpath.py measures each one
against the plain way it replaces (`python -m bench --only hotpath`; the comparisons'
names are given below).

The hot paths are ingestion's record loops (`api/convert.py:records_from_proto`,
`UsageEngine.check_all`, `UsageEngine.count`) and the session-start reads
(`usecases/session_authorization.py:authorize`, `usecases/sim_status.py:sim_view`). Code
that uses a technique says so with a short tag (`# hotpath: positional construction`)
instead of repeating the explanation.

1. Positional construction. `positional(Candidate, row)` builds a NamedTuple from a tuple
   of all its fields, in order, through `tuple.__new__`: a NamedTuple's own `__new__` is
   a Python function that takes keywords, ~3x slower per object, and a record loop builds
   one or two objects per record. Nothing is checked: the row must hold every field, in
   the class's order. Measured: `positional_new_candidate`,
   `positional_new_record_result`, `positional_new_usage_record`,
   `namedtuple_positional_vs_keywords`.

2. Inlined look-up. A short method called once per record (`SimUsage.counters_for`'s
   scan of a SIM's few counters) is written out in the loop that calls it, with the
   method kept as the fallback for the rare case (the entry is missing): the call costs
   more than the scan. The copy is tagged `# hotpath: inlined <method>` and must keep
   doing what the method does. Measured: `inlined_counters_lookup`.

3. Enum members without Enum's machinery. A member read through its class in a loop
   (`RecordStatus.RATED`) is read once into a module constant (`records.RATED`); a
   member's number is its `_value_` attribute (`convert.number`), not the `.value`
   property; a number becomes a member through a dict by value
   (`model.USAGE_TYPES_BY_VALUE`, `convert.enum_from_proto`), not by calling the enum
   type. Measured:
   `enum_value_attribute`, `dict_by_enum_number`, `enum_from_number_dict`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

T = TypeVar("T", bound=tuple[object, ...])

if TYPE_CHECKING:

    def positional(cls: type[T], values: Iterable[object], /) -> T:
        """Technique 1: an instance of the NamedTuple `cls` from its fields in order."""
        ...

else:
    positional = tuple.__new__  # technique 1: no Python frame of its own
