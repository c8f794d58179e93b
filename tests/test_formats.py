"""Page formats (formats.py): float32 and quantised pages behind one interface; the state's validated
changes (`with_...`) and a rank's shard as a state the validator understands."""
import pytest
import torch
from test_optimize import packed_pair

from weightsep import quant
from weightsep.evaluate import packed_theta
from weightsep.formats import FLOAT32, PageFormat, QuantizedPages
from weightsep.pages import from_pages, materialize, to_pages
from weightsep.precision import PrecisionConfig, assign, format_counts, packed_bytes
from weightsep.store import Store

POLICIES = {"float32": PrecisionConfig(),
            "int4+int8": PrecisionConfig(precision="int4", exclusive_dtype="int8", group=16)}


def state_in(policy: str):
    state, _ = packed_pair()
    return assign(state, POLICIES[policy])


@pytest.mark.parametrize("policy", POLICIES)
def test_one_interface_no_none(policy):
    state = state_in(policy)
    assert isinstance(state.format, PageFormat)
    assert (state.format is FLOAT32) == (policy == "float32")
    assert sum(format_counts(state).values()) == state.n_shared + sum(v.n_exclusive for v in state.vnns.values())
    assert packed_bytes(state)["page_tables"] == sum(v.n_pages for v in state.vnns.values()) * 8


@pytest.mark.parametrize("policy", POLICIES)
def test_what_trains_is_what_is_stored_and_run(policy):
    """The training view of master pages gathers, bit for bit, the weights of the state `rounded` makes."""
    state = state_in(policy)
    g = torch.Generator().manual_seed(1)
    shared = state.shared_pages + 0.01 * torch.randn(state.shared_pages.shape, generator=g)
    exclusive = {n: v.exclusive_pages + 0.01 * torch.randn(v.exclusive_pages.shape, generator=g)
                 for n, v in state.vnns.items()}
    pages, excl, fmt = state.format.rounded(shared, exclusive)
    stored = state.with_pages(pages, excl, format=fmt)
    for name, vnn in state.vnns.items():
        w = shared.clone().requires_grad_(True)
        theta = materialize(*state.format.as_run(w, exclusive[name], name), vnn.page_table, vnn.n_weights)
        assert torch.equal(theta.detach(), packed_theta(stored, name))
        theta.sum().backward()  # straight through: the gradient a float32 gather of the same pages gets
        plain = shared.clone().requires_grad_(True)
        materialize(plain, exclusive[name], vnn.page_table, vnn.n_weights).sum().backward()
        assert torch.equal(w.grad, plain.grad)
        flat = materialize(shared, exclusive[name], vnn.page_table, vnn.n_weights)
        deployed = state.format.deployed(name, flat, vnn.page_table, state.page_size)
        if policy == "float32":
            assert deployed is flat
        else:
            codes = torch.cat([fmt.shared_codes, fmt.exclusive_codes[name]])[vnn.page_table]
            expected = quant.quantize(to_pages(flat, state.page_size), codes, fmt.group)[0]
            assert torch.equal(deployed, from_pages(expected, vnn.n_weights))


def test_a_promoted_page_keeps_its_format_and_float32_stays_float32():
    q = state_in("int4+int8").format
    rows = torch.tensor([0, 2])
    grown = q.promoted("a", rows)
    assert torch.equal(grown.exclusive_codes["a"], torch.cat([q.exclusive_codes["a"], q.shared_codes[rows]]))
    assert torch.equal(grown.exclusive_codes["b"], q.exclusive_codes["b"]) and q.exclusive_codes["a"].numel() < \
        grown.exclusive_codes["a"].numel()
    assert FLOAT32.promoted("a", rows) is FLOAT32


@pytest.mark.parametrize("policy", POLICIES)
def test_a_shard_holds_what_a_rank_holds_and_is_a_valid_state(policy, tmp_path):
    """A rank's part (what pipeline.shard gave): every page table and Fisher and the shared pages,
    only its own DNNs' exclusive pages (and their formats), the others' emptied."""
    state = state_in(policy)
    assert all(v.n_exclusive for v in state.vnns.values())
    part = state.shard(["a"])
    assert part.held == ("a",) and part.is_shard and not state.is_shard
    assert part.shared_pages is state.shared_pages and part.shared_fisher is state.shared_fisher
    for n, v in part.vnns.items():
        w = state.vnns[n]
        kept = w.exclusive_pages if n == "a" else w.exclusive_pages[:0]
        assert torch.equal(v.exclusive_pages, kept) and v.exclusive_pages.shape[1] == state.page_size
        assert v.page_table is w.page_table and v.fisher is w.fisher and v.buffers is w.buffers
        if policy != "float32":
            for got, whole in ((part.format.exclusive_codes[n], state.format.exclusive_codes[n]),
                               (part.format.exclusive_scales[n], state.format.exclusive_scales[n])):
                assert torch.equal(got, whole if n == "a" else whole[:0])
    part.validate()
    assert part.vnns["b"].n_exclusive == 0 and state.vnns["b"].n_exclusive > 0  # the state is not modified
    with pytest.raises(ValueError, match="dead memory|outside"):  # the same contents as a whole state
        part.replace(held=None)
    with pytest.raises(ValueError, match="holds no exclusive pages"):
        part.with_pages(exclusive={"b": state.vnns["b"].exclusive_pages})
    with pytest.raises(ValueError, match="shard"):
        Store(tmp_path / "s").save(part)
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_changes_return_validated_states_and_leave_the_original():
    state, _ = packed_pair()
    a = state.vnns["a"]
    table = a.page_table.clone()
    table[0] = 10**6
    with pytest.raises(ValueError, match="outside"):
        state.with_pages(page_tables={"a": table})
    with pytest.raises(ValueError, match="NaN"):
        state.with_pages(state.shared_pages * float("nan"))
    less = state.without_vnn("a")
    assert list(less.vnns) == ["b"] and list(state.vnns) == ["a", "b"]
    assert list(less.with_vnn(a).vnns) == ["b", "a"]
    assert list(state.with_vnn(a.with_page_table(a.page_table.clone())).vnns) == ["a", "b"]  # replaced in place
    with pytest.raises(ValueError, match="not packed"):
        state.without_vnn("c")
    q = assign(state, PrecisionConfig(precision="int8"))
    assert set(q.without_vnn("a").format.exclusive_codes) == {"b"} and set(q.format.exclusive_codes) == {"a", "b"}
    with pytest.raises(ValueError, match="cannot represent"):
        q.with_pages(q.shared_pages + 1e-3)
    assert q.with_format(FLOAT32).format is FLOAT32  # dequantised values are float32 pages too
    with pytest.raises(ValueError, match="PageFormat"):
        state.replace(format=None)


def test_a_quantised_format_round_trips_the_store_and_float32_writes_what_it_always_did(tmp_path):
    for policy in POLICIES:
        state = state_in(policy)
        manifest = Store(tmp_path / policy).save(state)
        back = Store(tmp_path / policy).load()
        assert type(back.format) is type(state.format)
        assert ("precision" in manifest) == isinstance(state.format, QuantizedPages)
        if policy == "float32":
            assert set(manifest["shared"]["tensors"]) == {"shared_pages", "shared_fisher"}
            assert set(manifest["vnns"][0]["file"]["tensors"]) == {"page_table", "exclusive_pages", "fisher"}
        for n, v in state.vnns.items():
            assert torch.equal(back.vnns[n].exclusive_pages, v.exclusive_pages)
