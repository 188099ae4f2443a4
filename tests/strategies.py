"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from attempt_ledger import ReceiptEvent, ReceiptRecord
from attempt_ledger._codec import rust_trim

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

# Text that can be encoded as UTF-8 (no lone surrogates).
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
ids = st.one_of(
    text, st.sampled_from(["run-1", "a/b", "..", "", " ", "é", "a\x00b", "\u3000x\u3000"])
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=U64_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
payloads = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(text, children, max_size=4)
    ),
    max_leaves=12,
)
event_types = st.one_of(text, st.sampled_from([" start ", "\x1cx\x1f", "\u2028end\u3000", ""]))
events = st.builds(ReceiptEvent, event_types, payloads)
batches = st.lists(events, min_size=1, max_size=5)
attempts = st.integers(min_value=0, max_value=U32_MAX)

records = st.builds(
    ReceiptRecord,
    version=st.just(1),
    run_id=ids,
    node_id=ids,
    attempt=attempts,
    session_id=ids,
    seq=st.integers(min_value=0, max_value=U64_MAX),
    ts_ms=st.integers(min_value=0, max_value=U64_MAX),
    event_type=event_types.map(rust_trim),
    payload=payloads,
)


def seq_line(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode() + b"\n"


# Lines that are not valid for seq purposes, each with its newline (except the torn fragment).
junk_lines = st.one_of(
    st.just(b"not-json\n"),
    st.just(b"\n"),
    st.just(b"   \n"),
    st.just(b'{"no_seq":1}\n'),
    st.just(b'{"seq":"7"}\n'),
    st.just(b'{"seq":7.0}\n'),
    st.just(b'{"seq":true}\n'),
    st.just(b'{"seq":-1}\n'),
    st.just(b'{"seq":18446744073709551616}\n'),
    st.just(b'{"seq":1,"x":NaN}\n'),
    st.just(b"[1,2]\n"),
    st.just(b'{"seq":\xff1}\n'),
    st.just(b"\xff\xfe\n"),
    st.just(b"\x00\x00\x00\n"),
    st.binary(max_size=30).filter(lambda b: b"\n" not in b).map(lambda b: b + b"\n"),
)


# Anything at all, biased towards newlines, braces and seq lines so that tails are interesting.
def hashed_line(seq: int) -> bytes:
    """A line that ends like a schema-2 record, its hash made up from its seq."""
    digest = f"{seq:064x}"[-64:]
    return b'{"seq":%d,"prev_hash":null,"record_hash":"%s"}\n' % (seq, digest.encode())


file_pieces = st.one_of(
    junk_lines,
    st.integers(min_value=0, max_value=U64_MAX).map(seq_line),
    st.integers(min_value=0, max_value=50).map(hashed_line),
    st.integers(min_value=0, max_value=50).map(seq_line),
    st.binary(max_size=40),
    st.sampled_from([b"\n", b"{", b"}", b'{"seq":', b"\r\n", b" "]),
)
file_contents = st.lists(file_pieces, max_size=25).map(b"".join)

# -- floats and hash chains (schema v2) ------------------------------------------------------------

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
# Floats around the edges of upstream's notations: 1e-5, 1e16, and repr's 1e-4.
edge_floats = st.one_of(
    st.floats(min_value=1e-10, max_value=1e-3),
    st.floats(min_value=1e15, max_value=1e17),
    st.sampled_from([1e-5, 1e16, 9999999999999998.0, 9.999999999999999e-6, 5e-324, -0.0]),
).flatmap(lambda x: st.sampled_from([x, -x]))
float_payloads = st.recursive(
    st.one_of(finite_floats, edge_floats, st.sampled_from(["e-0", "1e-05"])),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(text, children, max_size=4)
    ),
    max_leaves=10,
)

# Histories of a ledger file: schema-1 or schema-2 batches (appended by the append rule of
# schema 2: a batch after a hashed last line continues the chain whatever it asks), and junk.
chain_histories = st.lists(
    st.one_of(
        batches.map(lambda b: ("v1", b)),
        batches.map(lambda b: ("v2", b)),
        junk_lines.map(lambda j: ("junk", j)),
    ),
    max_size=6,
)

# Payloads the fast encoder must write as the reference does: ints past 64 bits, every finite
# float, control characters and U+2028 in keys and strings, tuples among the containers.
wide_scalars = st.one_of(
    json_scalars,
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(st.sampled_from('\x00\x07\x1f\x7f\x85\u2028\u2029"\\/é\U0001f600e-0null')),
)
wide_payloads = st.recursive(
    wide_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(
            st.one_of(text, wide_scalars.filter(lambda v: isinstance(v, str))), children, max_size=4
        ),
    ),
    max_leaves=16,
)
