"""What the verb modules share (pprm.cli.common): exit codes, argument types, inputs and outputs."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

import numpy as np
import pytest

from pprm.cli import common
from pprm.errors import TemplateError


def test_exit_codes_are_distinct_and_named() -> None:
    codes = [e.code for e in common.EXIT_CODES]
    names = [e.name for e in common.EXIT_CODES]
    assert codes == sorted(set(codes)) and len(set(names)) == len(names)
    assert codes == [common.EXIT_OK, common.EXIT_ERROR, common.EXIT_USAGE, common.EXIT_MISMATCH,
                     common.EXIT_PARTIAL, common.EXIT_INTERRUPTED] == [0, 1, 2, 3, 4, 130]


def test_epilog_lists_every_code_within_79_columns() -> None:
    text = common.exit_codes_epilog()
    lines = text.splitlines()
    assert lines[0] == "exit codes:" and max(len(line) for line in lines) <= 79
    for e in common.EXIT_CODES:
        assert any(line.split()[:2] == [str(e.code), e.name] for line in lines), e


@pytest.mark.parametrize(("parse", "text", "value"), [
    (common.int_at_least(1), "3", 3),
    (common.int_at_least(0), "0", 0),
    (common.sizes, "10000, 100000", [10000, 100000]),
    (common.seconds_up_to(3600), "0.5", 0.5),
    (common.seconds_up_to(3600), "3600", 3600.0),
    (common.state_codes, "DE,,HU ", ["DE", "HU"]),
])
def test_argument_types_accept(parse, text, value) -> None:
    assert parse(text) == value


@pytest.mark.parametrize(("parse", "text", "says"), [
    (common.int_at_least(1), "x", "'x' is not an integer"),
    (common.int_at_least(2), "1", "must be at least 2"),
    (common.sizes, "10,x", "comma-separated integers"),
    (common.sizes, "10,0", "must be positive"),
    (common.seconds_up_to(3600), "soon", "a number of seconds"),
    (common.seconds_up_to(3600), "0", "between 0 and 3600 seconds"),
    (common.seconds_up_to(3600), "3601", "between 0 and 3600 seconds"),
    (common.state_codes, " , ", "name at least one state"),
])
def test_argument_types_refuse_with_one_line(parse, text, says) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        parse(text)


def test_read_refs_accepts_crlf_a_bom_and_no_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "r.txt"
    path.write_bytes("\ufeffA-1\r\nB-2\r\nÄ-3".encode())
    assert common.read_refs(str(path)) == ["A-1", "B-2", "Ä-3"]
    for content, says in ((b"\xff\xfe", "not valid UTF-8"), (b"\n", "empty"), (b"A\n\nB\n", "line 2 is blank")):
        path.write_bytes(content)
        with pytest.raises(TemplateError, match=says):
            common.read_refs(str(path))


def test_load_npy_never_unpickles(tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(TemplateError, match=r"not a valid \.npy array"):
        common.load_npy(str(path), "templates")
    np.save(path, np.ones(3, np.float32))
    assert common.load_npy(str(path), "templates").tolist() == [1.0, 1.0, 1.0]


def test_atomic_output_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "out.msg"
    with common.AtomicOutput(str(target)) as out:
        out.write(b"first")
        out.write(b"second")
        assert not target.exists()
    assert not target.exists() and os.listdir(tmp_path) == []  # never committed: nothing left

    with common.AtomicOutput(str(target)) as out:
        with pytest.raises(RuntimeError):
            out.commit()  # nothing written yet
        out.write(b"whole")
        out.commit()
    assert target.read_bytes() == b"whole" and os.listdir(tmp_path) == ["out.msg"]

    with pytest.raises(IsADirectoryError) as exc:
        common.AtomicOutput(str(tmp_path))
    assert exc.value.errno == errno.EISDIR
    with pytest.raises(FileNotFoundError):
        common.AtomicOutput(str(tmp_path / "missing" / "out.msg"))


def test_emit_prints_json_or_text(capsys: pytest.CaptureFixture[str]) -> None:
    common.emit(argparse.Namespace(json=True, json_format="pprm.info/1"), {"ref": "Ä"}, "text")
    common.emit(argparse.Namespace(), {"ref": "Ä"}, "text")
    assert capsys.readouterr().out == '{\n "format": "pprm.info/1",\n "ok": true,\n "ref": "Ä"\n}\ntext\n'
