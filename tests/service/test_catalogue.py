"""The served catalogue: id <-> index lookups without a Python str per item, duplicate ids refused,
case-insensitive search, and a memory footprint far below a dict of str."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from gru4rec.foundation.errors import ModelUnavailable
from service.catalogue import ItemCatalogue


def test_lookups_both_ways():
    ids = ["214536502", "0115", "115", "007", "7", "ü-ñ", 'quote"s', "nan", "NA", "a b", "x" * 256, "😀"]
    catalogue = ItemCatalogue(ids)
    assert len(catalogue) == len(ids)
    assert catalogue.lookup(ids) == list(range(len(ids)))
    assert [catalogue.index_of(i) for i in ids] == list(range(len(ids)))
    assert catalogue.ids_of(range(len(ids))) == ids and catalogue.id_of(5) == "ü-ñ"
    assert catalogue.lookup(["nope", "0115", "1150", "", "07", "😀"]) == [-1, 1, -1, -1, -1, 11]
    assert catalogue.known(["7", "x", "115"]) == [4, 2] and catalogue.known(None) == []


def test_many_ids_and_misses():
    ids = [str(10**9 + 7 * j) for j in range(50_000)]
    catalogue = ItemCatalogue(ids)
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(ids), size=500).tolist()
    assert catalogue.lookup([ids[j] for j in picks]) == picks
    assert catalogue.lookup([str(10**9 + 7 * j + 1) for j in picks]) == [-1] * 500


def test_duplicate_ids_are_refused():
    with pytest.raises(ModelUnavailable, match="'42' occurs twice"):
        ItemCatalogue(["1", "42", "3", "42"], source="models/m")


def test_search_ignores_case_and_takes_the_text_literally():
    catalogue = ItemCatalogue(["Shoe-1", "SHOE-2", "hat", "a.b", "axb", "(x)"])
    assert catalogue.matching("shoe").tolist() == [True, True, False, False, False, False]
    assert catalogue.matching("a.b").tolist() == [False, False, False, True, False, False]
    assert catalogue.matching("(x").tolist() == [False] * 5 + [True]


def test_memory_per_item_is_small():
    ids = [str(214_000_000 + j) for j in range(200_000)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    catalogue = ItemCatalogue(ids)
    gc.collect()
    held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    per_item = held / len(ids)
    assert per_item < 40, per_item  # ids, offsets, hashes, order: about 29 bytes per 9-digit id
    assert catalogue.nbytes / len(ids) < 40  # a dict of str would be ~130 (str object, dict slot, boxed int)
