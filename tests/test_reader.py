from __future__ import annotations

import errno
import os
import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attempt_ledger._lines import line_seq
from attempt_ledger._reader import iter_lines, read_last_seq, scan_last_seq, tail_state

from .strategies import file_contents, seq_line

block_sizes = st.one_of(st.integers(min_value=1, max_value=70), st.sampled_from([4096, 8192]))


def naive_lines(data: bytes) -> list[bytes]:
    """The lines by a plain split: the final fragment is one when it parses as a valid line."""
    lines = data.split(b"\n")
    return lines if line_seq(lines[-1]) is not None else lines[:-1]


def naive_last_seq(data: bytes) -> int:
    return naive_tail(data)[0]


def naive_tail(data: bytes) -> tuple[int, bool, str | None]:
    """What an append reads from the tail: last seq, torn, the last valid line's record_hash."""
    torn = bool(data) and not data.endswith(b"\n")
    for line in reversed(naive_lines(data)):
        seq = line_seq(line)
        if seq is not None:
            match = re.search(rb',"record_hash":"([0-9a-f]{64})"}$', line)
            return seq, torn, None if match is None else match[1].decode()
    return 0, torn, None


def _fd_of(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@given(data=file_contents, block_size=block_sizes)
def test_tail_reader_equals_naive_scan(tmp_path: Path, data: bytes, block_size: int) -> None:
    fd = _fd_of(tmp_path, data)
    try:
        got = scan_last_seq(fd, len(data), block_size)
    finally:
        os.close(fd)
    assert got == naive_last_seq(data)


@given(data=file_contents, block_size=block_sizes)
def test_tail_state_equals_naive_scan_of_the_sealed_file(
    tmp_path: Path, data: bytes, block_size: int
) -> None:
    fd = _fd_of(tmp_path, data)
    try:
        got = tail_state(fd, len(data), block_size)
    finally:
        os.close(fd)
    assert got == naive_tail(data)


@given(data=file_contents, chunk_size=block_sizes, fragment=st.booleans())
def test_forward_reader_equals_split(
    tmp_path: Path, data: bytes, chunk_size: int, fragment: bool
) -> None:
    fd = _fd_of(tmp_path, data)
    try:
        got = list(iter_lines(fd, 0, chunk_size, fragment=fragment))
    finally:
        os.close(fd)
    complete = naive_lines(data) if fragment else data.split(b"\n")[:-1]
    got_seqs = [None if line is None else line_seq(line) for line, _ in got]
    assert got_seqs == [line_seq(line) for line in complete]
    ends = [i + 1 for i, byte in enumerate(data) if byte == 0x0A]
    if len(complete) > len(ends):  # the final fragment, which parses: it ends with the file
        ends.append(len(data))
    assert [end for _, end in got] == ends
    # A line is only ever dropped (None) when it could not have been a JSON object.
    for (line, _), original in zip(got, complete, strict=True):
        assert line in (original, None)


def test_missing_and_empty_files_have_seq_zero(tmp_path: Path) -> None:
    assert read_last_seq(tmp_path / "missing.jsonl") == 0
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert read_last_seq(tmp_path / "empty.jsonl") == 0


def test_invalid_utf8_does_not_reset_seq(tmp_path: Path) -> None:
    # The seed reads the whole file as UTF-8 and returns 0 when one byte is bad.
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(seq_line(1) + seq_line(2) + b"\xff\xfe bad\n")
    assert read_last_seq(path) == 2


def test_unterminated_fragment_counts_only_when_it_parses(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(seq_line(1) + b'{"seq":2}')  # a line that lost only its newline
    assert read_last_seq(path) == 2
    path.write_bytes(seq_line(1) + b'{"seq":2')  # torn inside the object
    assert read_last_seq(path) == 1


def test_a_huge_final_fragment_that_cannot_be_json_is_dropped_as_read(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with path.open("wb") as f:
        f.write(seq_line(5) + b'{"seq":6,"x":"' + b"\0" * (16 << 20))
    fd = os.open(path, os.O_RDONLY)
    tracemalloc.start()
    try:
        lines = [line for line, _ in iter_lines(fd, 0, 1 << 16)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert lines == [b'{"seq": 5}']
    assert peak < 1 << 20
    assert read_last_seq(path) == 5


def test_scanning_back_over_garbage_holds_little_memory(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    garbage_line = b"x" * (16 << 20) + b"}\n"  # one 16 MiB line that ends like an object
    nul_run = b"\0" * (16 << 20) + b"\n"  # what a crash can leave behind
    with path.open("wb") as f:
        f.write(seq_line(41) + b"{" + garbage_line + nul_run + b"}" * (4 << 20) + b"\n")
    tracemalloc.start()
    try:
        assert read_last_seq(path) == 41
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The x-line ends in "}" and holds no control byte, so its pieces are kept until its start
    # shows "{x", which no object opens with: one line, never joined. The NUL run is dropped
    # piece by piece, the brace run when its start shows.
    assert peak < (16 << 20) + (1 << 20)


def test_forward_reader_drops_lines_that_cannot_be_json(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with path.open("wb") as f:
        f.write(b"x" * (8 << 20) + b"\n" + b"\0" * (8 << 20) + b"\n" + seq_line(3))
    fd = os.open(path, os.O_RDONLY)
    tracemalloc.start()
    try:
        lines = [line for line, _ in iter_lines(fd, 0, 1 << 16)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert lines == [None, None, b'{"seq": 3}']
    assert peak < 1 << 20


def test_read_last_seq_of_a_directory_names_the_path(tmp_path: Path) -> None:
    from attempt_ledger import LedgerIOError

    with pytest.raises(LedgerIOError) as info:
        read_last_seq(tmp_path)
    assert info.value.path == tmp_path
    assert str(tmp_path) in str(info.value)


def _sizes_that_cut_lines(data: bytes) -> list[int]:
    # Blocks that end exactly at a line's start or at an object's opening brace inside a line:
    # the sizes where a block holds a line's tail but not its newline.
    sizes = set()
    for line in data.split(b"\n"):
        starts = [0] + [i for i, byte in enumerate(line) if byte == 0x7B]
        sizes.update(len(line) - i + extra for i in starts for extra in (0, 1, 2))
    return sorted(size for size in sizes if size > 0) or [1]


@given(data=file_contents, choice=st.data())
def test_tail_readers_with_blocks_cut_at_line_boundaries(
    tmp_path: Path, data: bytes, choice: st.DataObject
) -> None:
    block_size = choice.draw(st.sampled_from(_sizes_that_cut_lines(data)))
    fd = _fd_of(tmp_path, data)
    try:
        assert scan_last_seq(fd, len(data), block_size) == naive_last_seq(data)
        assert tail_state(fd, len(data), block_size) == naive_tail(data)
    finally:
        os.close(fd)


def test_a_block_without_a_newline_is_not_taken_for_a_whole_line(tmp_path: Path) -> None:
    data = seq_line(1) + b'junk{"seq":5}\n'  # the line is invalid; its tail alone would parse
    fd = _fd_of(tmp_path, data)
    try:
        assert tail_state(fd, len(data), len(b'{"seq":5}\n')) == (1, False, None)
    finally:
        os.close(fd)


def _failing_pread(monkeypatch: pytest.MonkeyPatch) -> None:
    def pread(fd: int, size: int, offset: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "pread", pread)


def test_read_errors_name_the_path_the_step_and_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attempt_ledger import LedgerIOError
    from attempt_ledger._reader import iter_decoded

    path = tmp_path / "node.jsonl"
    path.write_bytes(seq_line(1))
    _failing_pread(monkeypatch)
    for read in (lambda: read_last_seq(path), lambda: list(iter_decoded(path))):
        with pytest.raises(LedgerIOError) as info:
            read()
        assert (info.value.path, info.value.errno) == (path, errno.EIO)
        assert str(info.value) == f"{path}: cannot read the ledger: {os.strerror(errno.EIO)}"
        assert isinstance(info.value.__cause__, OSError)


def test_read_last_seq_reads_in_blocks_of_the_size_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.jsonl"
    path.write_bytes(seq_line(7) + b"x" * 100 + b"\n")  # garbage last: the scan goes on back
    sizes: list[int] = []
    real_pread = os.pread

    def pread(fd: int, size: int, offset: int) -> bytes:
        sizes.append(size)
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", pread)
    assert read_last_seq(path, 16) == 7
    assert max(sizes) == 16


def test_iter_decoded_resumes_at_the_offset_and_restarts_only_when_the_file_shrank(
    tmp_path: Path,
) -> None:
    from attempt_ledger._reader import iter_decoded

    path = tmp_path / "node.jsonl"
    first, second = seq_line(1), seq_line(2)
    path.write_bytes(first + second)

    def seqs(offset: int) -> list[tuple[int | None, int]]:
        return [(line_seq(line or b""), end) for _, line, end in iter_decoded(path, offset)]

    size = len(first + second)
    assert seqs(0) == [(1, len(first)), (2, size)]
    assert seqs(len(first)) == [(2, size)]
    assert seqs(size) == []  # nothing new: not a reason to start over
    assert seqs(size + 1) == [(1, len(first)), (2, size)]  # shorter than the offset: from 0


def test_iter_decoded_gives_a_long_hopeless_line_as_none(tmp_path: Path) -> None:
    from attempt_ledger._reader import READ_CHUNK, iter_decoded

    path = tmp_path / "node.jsonl"
    garbage = b"x" * (READ_CHUNK + 10)  # read in two chunks: dropped, not joined
    path.write_bytes(garbage + b"\n" + seq_line(3))
    got = [(record, line) for record, line, _ in iter_decoded(path)]
    assert got == [(None, None), (None, seq_line(3)[:-1])]  # {"seq": 3} is no receipt


def test_tail_state_reads_the_last_block_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = seq_line(4) + b"x" * 10 + b"\n"  # the last line is not valid: the scan runs
    fd = _fd_of(tmp_path, data)
    reads: list[tuple[int, int]] = []
    real_pread = os.pread

    def pread(fd: int, size: int, offset: int) -> bytes:
        reads.append((size, offset))
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", pread)
    try:
        assert tail_state(fd, len(data), 8).last_seq == 4
    finally:
        os.close(fd)
    assert len(reads) == len(set(reads))  # the block the fast path read is handed on


@pytest.mark.parametrize(
    "garbage",
    [
        b'{"seq":1,"x":"\x01"}',  # a raw control byte: dropped as soon as it is seen
        b'xx{"seq":1,"pad":"' + b"p" * 40 + b'"}',  # closes like an object, opens like none
        b'{"seq":1,"pad":"' + b"p" * 40 + b'"} x',  # opens like an object, closes like none
    ],
)
def test_lines_backward_gives_a_long_line_that_cannot_be_json_as_empty(
    tmp_path: Path, garbage: bytes
) -> None:
    from attempt_ledger._reader import lines_backward

    data = seq_line(1) + garbage + b"\n" + seq_line(2)
    fd = _fd_of(tmp_path, data)
    try:
        lines = list(lines_backward(fd, len(data), 8))
    finally:
        os.close(fd)
    assert lines == [b"", seq_line(2)[:-1], b"", seq_line(1)[:-1]]


def test_the_tail_scan_starts_over_when_the_file_shrinks_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer rolling back a failed append truncates the file while the scan reads backwards.
    kept = seq_line(1)
    data = kept + seq_line(2) + b"x" * 30 + b"\n"
    fd = _fd_of(tmp_path, data)
    real_pread = os.pread

    def pread(fd: int, size: int, offset: int) -> bytes:
        chunk = real_pread(fd, size, offset)
        os.truncate(tmp_path / "ledger.jsonl", len(kept))  # later reads come up short
        return chunk

    monkeypatch.setattr(os, "pread", pread)
    try:
        assert scan_last_seq(fd, len(data), 8) == 1
    finally:
        os.close(fd)


def test_the_tail_scan_reads_the_files_first_byte_alone(tmp_path: Path) -> None:
    # Blocks one byte short of the file: the last step reads just the first line's "{".
    data = seq_line(3) + b"xx\n"
    fd = _fd_of(tmp_path, data)
    try:
        assert scan_last_seq(fd, len(data), len(data) - 1) == 3
    finally:
        os.close(fd)


def test_a_piece_found_hopeless_stays_so_until_the_newline(tmp_path: Path) -> None:
    # Read 3 bytes at a time: the first piece holds a raw control byte before any bracket, so a
    # later piece that opens like an object must not revive the line (its start was dropped).
    data = b'  \x01{"seq": 1}\n'
    fd = _fd_of(tmp_path, data)
    try:
        assert list(iter_lines(fd, 0, 3)) == [(None, len(data))]
    finally:
        os.close(fd)


def _tail_state_of(tmp_path: Path, data: bytes, end: int | None = None, block: int = 4096) -> Any:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return tail_state(fd, len(data) if end is None else end, block)
    finally:
        os.close(fd)


@pytest.mark.parametrize("sealed", [False, True])
@pytest.mark.parametrize("tail", [b'{"seq":2}x', b'{"seq":2}}', b'{"seq":2}"'])
def test_the_last_line_is_judged_whole_to_its_last_byte(
    tmp_path: Path, tail: bytes, sealed: bool
) -> None:
    # A valid line with a stray byte after it is not valid: the last seq is the line before,
    # however the line would read without its last byte.
    data = b'{"seq":1}\n' + tail + b"\n" * sealed
    assert _tail_state_of(tmp_path, data) == (1, not sealed, None)
    assert read_last_seq(tmp_path / "ledger.jsonl") == 1


@pytest.mark.parametrize("sealed", [False, True])
@pytest.mark.parametrize("head", [b"", b'{"seq":1}\n'])
def test_lines_that_parse_only_joined_across_a_newline_are_not_a_line(
    tmp_path: Path, head: bytes, sealed: bool
) -> None:
    data = head + b'{"a":1,\n"seq":7}' + b"\n" * sealed
    assert _tail_state_of(tmp_path, data) == (1 if head else 0, not sealed, None)


def test_the_last_line_is_judged_whole_to_its_first_byte(tmp_path: Path) -> None:
    # The block holds all of the line but its first byte.
    data = b'x{"seq":5}\n'
    assert _tail_state_of(tmp_path, data, block=len(data) - 1) == (0, False, None)


@pytest.mark.parametrize("byte", [b"x", b"}", b"\n"])
def test_a_one_byte_file_is_torn_unless_it_is_a_newline(tmp_path: Path, byte: bytes) -> None:
    assert _tail_state_of(tmp_path, byte) == (0, byte != b"\n", None)


def test_tail_state_reads_only_up_to_the_end_given(tmp_path: Path) -> None:
    data = b'{"seq":1}\n{"seq":2}\n{"seq":3}\n'
    assert _tail_state_of(tmp_path, data, end=20, block=8) == (2, False, None)
