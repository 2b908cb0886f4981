"""Records given the faster `__init__` (schemas/frozen.py: the output commands; the Stripe
records and the domain events are msgspec structs, tests/unit/test_stripe_records.py) are
still the frozen dataclasses every caller relies on: same signature, same values, equality,
hash, replace, and no assignment after construction."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from schemas import commands
from schemas.frozen import fast_init

RECORDS = [
    cls for cls in vars(commands).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == commands.__name__
]


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_a_record_built_fast_is_the_same_frozen_dataclass(cls: type) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    assert list(inspect.signature(cls.__init__).parameters) == ["self", *names]
    values = [f"v{i}" for i in range(len(names))]
    record = cls(*values)
    assert [getattr(record, n) for n in names] == values
    assert record == cls(**dict(zip(names, values, strict=True)))
    assert hash(record) == hash(cls(*values))
    changed = dataclasses.replace(record, **{names[0]: "other"})
    assert getattr(changed, names[0]) == "other" and getattr(record, names[0]) == "v0"
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(record, names[0], "x")
    with pytest.raises(TypeError):
        cls(*values[:-1])  # a missing field is refused, as by the generated __init__


def test_a_class_it_cannot_reproduce_keeps_its_generated_init() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithDefault:
        a: int
        b: int = 2

    generated = WithDefault.__init__
    assert fast_init(WithDefault).__init__ is generated
    assert WithDefault(1) == WithDefault(1, 2)
