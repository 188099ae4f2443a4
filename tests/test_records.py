"""The receipt models: the append's quick AppendSummary is attrs' own."""

from __future__ import annotations

import pickle
from pathlib import Path

import attrs
import pytest

from attempt_ledger import AppendSummary
from attempt_ledger._records import append_summary


def test_append_summary_makes_the_summary_attrs_makes() -> None:
    quick = append_summary(Path("a/b.jsonl"), 7, 2)
    made = AppendSummary(Path("a/b.jsonl"), 7, 2)
    assert type(quick) is AppendSummary
    assert quick == made
    assert hash(quick) == hash(made)
    assert (
        repr(quick)
        == repr(made)
        == "AppendSummary(path=PosixPath('a/b.jsonl'), seq=7, record_count=2)"
    )
    assert attrs.asdict(quick) == attrs.asdict(made)
    assert pickle.loads(pickle.dumps(quick)) == made
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        quick.seq = 8  # type: ignore[misc]


def test_append_summary_has_nothing_for_an_init_to_run() -> None:
    # append_summary sets the slots directly: only right while attrs' __init__ would do no more.
    fields = attrs.fields(AppendSummary)
    assert [field.name for field in fields] == ["path", "seq", "record_count"]
    for field in fields:
        assert field.validator is None
        assert field.converter is None
        assert field.default is attrs.NOTHING
        assert field.init
    assert not hasattr(AppendSummary, "__attrs_post_init__")
    assert not hasattr(AppendSummary, "__attrs_pre_init__")
