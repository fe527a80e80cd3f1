"""JSON Lines input of the CLIs: line numbers survive blank lines; bad lines raise the caller's error."""

from __future__ import annotations

import pytest

from compressor.cli.jsonl import jsonl_rows
from compressor.compression.request import CompressionInputError
from compressor.retrieval.errors import IndexInputError


@pytest.mark.parametrize("error", [CompressionInputError, IndexInputError])
def test_rows_keep_their_line_numbers_and_bad_lines_are_named(tmp_path, error):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n\n  \n{"text": "b"}\nnot json\n')
    rows = jsonl_rows(path, error)
    assert next(rows) == (1, {"text": "a"})
    assert next(rows) == (4, {"text": "b"})
    with pytest.raises(error, match=r"in\.jsonl:5: not valid JSON"):
        next(rows)
