"""The run-folder contract's shared pieces: the one row join."""

from __future__ import annotations

import numpy as np
import pytest

from ferens.errors import FerensError
from ferens.runs import row_positions


def test_row_positions_reorder_and_mark_absent_rows():
    ids = np.array([30, 10, 20])
    pos = row_positions(ids, np.array([20, 30, 99, 10]))
    assert pos.tolist() == [2, 0, -1, 1]
    assert ids[pos[pos >= 0]].tolist() == [20, 30, 10]
    assert row_positions(np.array([], dtype=np.int64), np.array([1])).tolist() == [-1]


def test_row_positions_refuse_duplicate_ids():
    with pytest.raises(FerensError, match="duplicates"):
        row_positions(np.array([1, 1, 2]), np.array([2]))
