"""advise_huge_pages: large CPU tensors keep their values and are advised on Linux; small ones are left alone."""

from __future__ import annotations

import sys

import pytest
import torch

from gru4rec.foundation.memory import advise_huge_pages


@pytest.mark.skipif(sys.platform != "linux", reason="madvise is Linux's")
def test_a_large_table_is_advised_and_keeps_its_values():
    table = torch.randn(300_000, 16)  # 19 MB: several 2 MB pages inside it
    before = table.clone()
    assert advise_huge_pages(table)
    assert torch.equal(table, before)
    table[::1000] += 1.0  # still ordinary writable memory
    assert torch.equal(table[1:1000], before[1:1000])


def test_small_or_foreign_tensors_are_left_alone():
    assert not advise_huge_pages(torch.zeros(1000))
    assert not advise_huge_pages(object())


def test_zeros_on_huge_pages_are_zeros_like():
    from gru4rec.foundation.memory import zeros_on_huge_pages

    like = torch.randn(300_000, 16)
    out = zeros_on_huge_pages(like)
    assert out.shape == like.shape and out.dtype == like.dtype and not out.any()
    assert zeros_on_huge_pages(torch.ones(3)).tolist() == [0.0, 0.0, 0.0]
