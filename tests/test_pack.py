"""Packing (-mode=a / -mode=r) against literal loops over weights, pages and occupants."""
import pytest
import torch

from weightsep.pack import (
    MODES,
    PACK_MODES,
    PUBLISHED_SHARED_PAGES,
    SHARED_CONTENT,
    SHARED_CONTENTS,
    PackConfig,
    add_vnn,
    new_state,
    pack_config,
    plans_a_set,
    remove_vnn,
    shared_pages_needed,
)
from weightsep.separation import RULES, SEPARATIONS

P, S = 64, 6


def dnn(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g), torch.rand(n, generator=g) + 0.01


def packed_weights(state, name) -> torch.Tensor:
    """A DNN's weights read back from the store, one weight at a time."""
    vnn = state.vnns[name]
    out = torch.empty(vnn.n_weights)
    for i in range(vnn.n_weights):
        row, j = int(vnn.page_table[i // P]), i % P
        out[i] = state.shared_pages[row, j] if row < state.n_shared else vnn.exclusive_pages[row - state.n_shared, j]
    return out


def page(theta: torch.Tensor, p: int) -> torch.Tensor:
    """Logical page p of a flat vector, zero-padded."""
    out = torch.zeros(P)
    chunk = theta[p * P:(p + 1) * P]
    out[:len(chunk)] = chunk
    return out


def two_dnns(content: str, mode: str = "ws"):
    config = PackConfig(mode=mode, page_size=P, n_shared=S, shared_content=content, matching="optimal")
    (ta, fa), (tb, fb) = dnn(0, 300), dnn(1, 250)  # 5 and 4 pages
    n_shared = shared_pages_needed([300, 250], config)
    s0 = new_state(config, n_shared)
    s1, _ = add_vnn(s0, "a", ta, fa, config, n_exclusive=1 if mode == "ws" else None)
    s2, _ = add_vnn(s1, "b", tb, fb, config, n_exclusive=1 if mode == "ws" else None)
    return (s0, s1, s2), {"a": (ta, fa), "b": (tb, fb)}


@pytest.mark.parametrize("mode", ["ws", "nwv"])
def test_page_tables_are_one_to_one_and_exclusive_pages_hold_the_original_weights(mode):
    (_, _, state), weights = two_dnns("fisher-mean", mode)
    S_ = state.n_shared
    assert S_ == (S if mode == "ws" else 5)  # NWV: as many shared pages as the largest DNN has
    for name, (theta, _) in weights.items():
        vnn = state.vnns[name]
        rows = [int(r) for r in vnn.page_table]
        assert len(rows) == -(-vnn.n_weights // P)
        shared_rows = [r for r in rows if r < S_]
        assert len(set(shared_rows)) == len(shared_rows)  # no two of its pages on one shared page
        exclusive_rows = [r - S_ for r in rows if r >= S_]
        assert exclusive_rows == list(range(vnn.exclusive_pages.shape[0]))
        assert len(exclusive_rows) == (1 if mode == "ws" else 0)
        for p, r in enumerate(rows):
            if r >= S_:
                assert torch.equal(vnn.exclusive_pages[r - S_], page(theta, p))


@pytest.mark.parametrize("content", ["fisher-mean", "first"])
def test_the_first_dnn_packs_bit_for_bit(content):
    (_, s1, _), weights = two_dnns(content)
    assert torch.equal(packed_weights(s1, "a"), weights["a"][0])


def test_random_content_keeps_the_stores_start_until_training():
    (s0, s1, s2), _ = two_dnns("random")
    assert torch.equal(s1.shared_pages, s0.shared_pages) and torch.equal(s2.shared_pages, s0.shared_pages)
    assert s0.shared_pages.std() == pytest.approx(0.01, rel=0.2)


@pytest.mark.parametrize("content", ["fisher-mean", "first"])
def test_where_the_second_dnns_shared_content_lands(content):
    (_, s1, s2), weights = two_dnns(content)
    tb, fb = weights["b"]
    b = s2.vnns["b"]
    occupied = {int(r) for r in s1.vnns["a"].page_table if r < S}
    expected = s1.shared_pages.clone()
    for p, r in enumerate(int(x) for x in b.page_table):
        if r >= S:
            continue
        w_b, f_b = page(tb, p), page(fb, p)
        for j in range(P):
            if r not in occupied:
                expected[r, j] = w_b[j]
            elif content == "fisher-mean":
                f_old, w_old = s1.shared_fisher[r, j], s1.shared_pages[r, j]
                if f_old + f_b[j] > 0:
                    expected[r, j] = (f_old * w_old + f_b[j] * w_b[j]) / (f_old + f_b[j])
    torch.testing.assert_close(s2.shared_pages, expected, rtol=1e-6, atol=1e-7)


def test_shared_fisher_is_the_sum_of_the_occupants_and_remove_takes_out_exactly_one():
    (s0, s1, s2), weights = two_dnns("fisher-mean")

    def fisher_of(state, names):
        total = torch.zeros(S, P)
        for name in names:
            vnn, (_, f) = state.vnns[name], weights[name]
            for p, r in enumerate(int(x) for x in vnn.page_table):
                if r < S:
                    total[r] += page(f, p)
        return total

    torch.testing.assert_close(s2.shared_fisher, fisher_of(s2, ["a", "b"]))
    without_b = remove_vnn(s2, "b")
    torch.testing.assert_close(without_b.shared_fisher, s1.shared_fisher)
    assert list(without_b.vnns) == ["a"]
    without_a = remove_vnn(s2, "a")
    torch.testing.assert_close(without_a.shared_fisher, fisher_of(s2, ["b"]), rtol=1e-5, atol=1e-6)
    assert list(s2.vnns) == ["a", "b"]  # the input state is untouched


def test_variants_come_from_their_tables():
    assert MODES == tuple(PACK_MODES) and SHARED_CONTENT == tuple(SHARED_CONTENTS) and SEPARATIONS == tuple(RULES)
    for mode in PACK_MODES:
        for separation in RULES:
            config = PackConfig(mode=mode, separation=separation)
            assert config.plans_a_set == plans_a_set(mode, separation) == (mode == "ws" and separation == "budget")
    for content in SHARED_CONTENTS:  # an empty store starts as its content's start: noise only for "random"
        pages = new_state(PackConfig(page_size=P, n_shared=S, shared_content=content), S).shared_pages
        assert bool(pages.any()) == (content == "random")
    with pytest.raises(ValueError, match="choose from ws, nwv"):
        PackConfig(mode="both")


def test_the_shared_pages_follow_the_dnns_unless_given():
    """S defaults to the largest DNN's page count in both modes (a DNN's pages lie on distinct shared
    pages); a given S is WS's (the published 128 is one flag away), while NWV always derives it."""
    sizes = [300, 250, 64]  # 5, 4 and 1 pages of 64
    assert PackConfig().n_shared is None
    assert shared_pages_needed(sizes, PackConfig(page_size=P)) == 5
    assert shared_pages_needed(sizes, PackConfig(page_size=P, mode="nwv")) == 5
    assert shared_pages_needed(sizes, PackConfig(page_size=P, n_shared=PUBLISHED_SHARED_PAGES)) == 128
    assert shared_pages_needed(sizes, PackConfig(page_size=P, n_shared=3)) == 3
    assert shared_pages_needed(sizes, PackConfig(page_size=P, mode="nwv", n_shared=3)) == 5
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="--shared-pages"):
            PackConfig(n_shared=bad)


def test_a_store_keeps_its_shared_pages_when_its_config_left_them_to_the_dnns():
    """`add` to a store rebuilds the store's pack config: S is the state's, whatever its config says."""
    import argparse

    from weightsep.cli import stored_pack_config

    state = new_state(PackConfig(page_size=P), S)  # a config that leaves S to the DNNs: None
    assert pack_config(state).n_shared is None
    flags = argparse.Namespace(seed=0, page_size=None, mode=None)
    assert stored_pack_config(state, argparse.Namespace(**vars(flags), n_shared=None)).n_shared == S
    assert stored_pack_config(state, argparse.Namespace(**vars(flags), n_shared=S)).n_shared == S
    with pytest.raises(ValueError, match=f"made with n_shared={S}, not {S + 1}"):
        stored_pack_config(state, argparse.Namespace(**vars(flags), n_shared=S + 1))
