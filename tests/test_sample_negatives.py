"""sample_negatives: never a positive, in range, uniform, reproducible, and its errors."""
import re

import pytest
import torch
from scipy import stats

from dmfx import ops, reference
from conftest import CUDA_READY, CUDA_SKIP_REASON, random_csr


def sample(csr, users, num_negatives=5, **kwargs):
    kwargs.setdefault("seed", 0)
    return ops.sample_negatives(csr.indptr, csr.indices, users, csr.num_cols, num_negatives,
                                **kwargs)


def positives_of(csr, user):
    return set(csr.indices[csr.indptr[user]:csr.indptr[user + 1]].tolist())


def assert_valid(csr, users, out):
    """Every sample an item in range that its user has not interacted with."""
    assert int(out.min()) >= 0 and int(out.max()) < csr.num_cols
    for b, user in enumerate(users.tolist()):
        assert not positives_of(csr, user) & set(out[b].tolist())


def every_other(t):
    """``t`` as a strided view: every other element of a longer tensor, whose elements between
    hold -1 (a bad id), so a kernel that ignores the stride reads them."""
    return torch.stack([t, torch.full_like(t, -1)], 1).view(-1)[::2]


@pytest.fixture
def case(device, index_dtype):
    # row 3 is full in random_csr: drop it from the users that must get negatives
    csr = random_csr(30, 25, density=0.4, index_dtype=index_dtype, device=device)
    users = torch.tensor([u for u in range(30) if u != 3] * 3, device=device).to(index_dtype)
    return csr, users


def test_never_a_positive_always_in_range(case):
    csr, users = case
    out = sample(csr, users, num_negatives=9)
    assert out.shape == (users.numel(), 9) and out.dtype == torch.int64
    assert out.device == users.device
    assert int(out.min()) >= 0 and int(out.max()) < csr.num_cols
    for b, user in enumerate(users.tolist()):
        assert not positives_of(csr, user) & set(out[b].tolist())


def test_uniform_over_the_free_items(device):
    csr = random_csr(4, 40, density=0.5, seed=3, device=device)
    user = 2
    free = sorted(set(range(40)) - positives_of(csr, user))
    draws = sample(csr, torch.full((2000,), user, device=device), num_negatives=20, seed=11)
    counts = torch.bincount(draws.flatten().cpu(), minlength=40)
    assert counts[sorted(positives_of(csr, user))].sum() == 0
    result = stats.chisquare(counts[free].numpy())
    assert result.pvalue > 1e-3, result


def test_matches_the_reference_distribution(device):
    csr = random_csr(6, 12, density=0.5, seed=5, device=device)
    users = torch.full((20000,), 4, device=device)
    ours = torch.bincount(sample(csr, users, num_negatives=1, seed=1).flatten().cpu(), minlength=12)
    g = torch.Generator(device=device).manual_seed(1)
    theirs = torch.bincount(
        reference.sample_negatives(csr.indptr, csr.indices, users, 12, 1, generator=g)
        .flatten().cpu(), minlength=12)
    assert torch.equal(ours > 0, theirs > 0)  # same support
    observed = torch.stack([ours[ours > 0], theirs[theirs > 0]]).numpy()
    assert stats.chi2_contingency(observed).pvalue > 1e-3


def test_the_reference_refuses_what_would_make_it_loop_forever():
    """An item id >= num_items in user 0's row is user 1's item under the key u * N + i: it hid
    user 1's only free item, and the rejection loop never ended."""
    indptr, indices = torch.tensor([0, 1, 3]), torch.tensor([3, 1, 2])
    with pytest.raises(IndexError, match=r"indices: item ids must lie in \[0, 3\)"):
        reference.sample_negatives(indptr, indices, torch.tensor([1]), 3, 1)
    # Repeated ids count once: item 2 is still free for user 0.
    out = reference.sample_negatives(torch.tensor([0, 3]), torch.tensor([0, 0, 1]),
                                     torch.tensor([0, 0]), 3, 4)
    assert out.eq(2).all()
    with pytest.raises(ValueError, match="interacted with every item"):
        reference.sample_negatives(torch.tensor([0, 4]), torch.tensor([0, 2, 1, 2]),
                                   torch.tensor([0]), 3, 1)


def test_reproducible_from_a_seed_and_from_the_global_seed(case):
    csr, users = case
    assert torch.equal(sample(csr, users, seed=42), sample(csr, users, seed=42))
    assert not torch.equal(sample(csr, users, seed=42), sample(csr, users, seed=43))
    with torch.random.fork_rng():  # the global seed of later tests stays theirs
        torch.manual_seed(7)
        first = sample(csr, users, seed=None)
        second = sample(csr, users, seed=None)
        torch.manual_seed(7)
        assert torch.equal(first, sample(csr, users, seed=None))
    assert not torch.equal(first, second)
    gen = torch.Generator().manual_seed(3)
    a = sample(csr, users, seed=None, generator=gen)
    gen.manual_seed(3)
    assert torch.equal(a, sample(csr, users, seed=None, generator=gen))


def test_strided_inputs_draw_what_contiguous_ones_draw(case):
    """users, indptr and indices as strided views give the samples of contiguous copies for
    the same seed: the kernel reads through the strides, never the -1 between."""
    csr, users = case
    strided = csr._replace(indptr=every_other(csr.indptr), indices=every_other(csr.indices))
    users_strided = every_other(users)
    assert not any(t.is_contiguous() for t in (strided.indptr, strided.indices, users_strided))
    out = sample(strided, users_strided, seed=8)
    assert torch.equal(out, sample(csr, users, seed=8))
    assert_valid(csr, users, out)


@pytest.mark.parametrize("csr_dtype, users_dtype", [(torch.int64, torch.int32),
                                                     (torch.int32, torch.int64)],
                         ids=["int64_csr-int32_users", "int32_csr-int64_users"])
def test_users_index_dtype_need_not_be_the_csrs(device, csr_dtype, users_dtype):
    """users has its own index dtype, either way round: the same samples as with one dtype."""
    csr = random_csr(30, 25, density=0.4, seed=4, index_dtype=csr_dtype, device=device)
    users = torch.tensor([u for u in range(30) if u != 3] * 2, device=device)
    out = sample(csr, users.to(users_dtype), seed=6)
    assert torch.equal(out, sample(csr, users.to(csr_dtype), seed=6))
    assert_valid(csr, users, out)


def test_a_user_with_one_free_item_always_gets_it(device, index_dtype):
    """The rank-to-item search at its narrowest: one free item, anywhere in the row (first,
    last, inside), drawn every time, by the kernel as by the reference."""
    g = torch.Generator().manual_seed(13)
    num_items = 37
    free = [0, num_items - 1, int(torch.randint(1, num_items - 1, (1,), generator=g))]
    rows = [[i for i in range(num_items) if i != f] for f in free]
    indptr = torch.tensor([0] + [len(r) * (k + 1) for k, r in enumerate(rows)])
    indices = torch.tensor([i for r in rows for i in r])
    indptr, indices = (t.to(index_dtype).to(device) for t in (indptr, indices))
    users = torch.tensor([0, 1, 2, 2, 1, 0], dtype=index_dtype, device=device)
    expected = torch.tensor(free, device=device)[users.long()].unsqueeze(1).expand(-1, 50)
    out = ops.sample_negatives(indptr, indices, users, num_items, 50, seed=14)
    assert torch.equal(out, expected)
    ref = reference.sample_negatives(indptr, indices, users, num_items, 50,
                                     generator=torch.Generator(device=device).manual_seed(14))
    assert torch.equal(ref, expected)


def test_sample_depends_only_on_its_slot(case):
    """A prefix of the batch draws what the whole batch draws there: a counter-based stream."""
    csr, users = case
    torch.testing.assert_close(sample(csr, users[:7], seed=5), sample(csr, users, seed=5)[:7])


@pytest.mark.skipif(not CUDA_READY, reason=CUDA_SKIP_REASON)
def test_cpu_and_cuda_agree_for_a_seed():
    csr = random_csr(30, 25, density=0.4)
    users = torch.tensor([0, 1, 2, 4, 5, 29] * 50)
    cpu = sample(csr, users, seed=9)
    cuda = ops.sample_negatives(csr.indptr.cuda(), csr.indices.cuda(), users.cuda(), 25, 5, seed=9)
    assert torch.equal(cpu, cuda.cpu())


def test_opcheck(case):
    csr, users = case
    torch.library.opcheck(
        torch.ops.dmfx.sample_negatives.default,
        (csr.indptr, csr.indices, users, csr.num_cols, 4, 123, True),
    )


def test_traced_without_a_seed_asks_for_one():
    """Drawing a seed reads it back to the host, which no trace can do: the error says so, under
    FakeTensorMode and torch.compile(fullgraph=True) alike."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    csr = random_csr(6, 12, density=0.5, seed=5)
    users = torch.tensor([0, 2, 4])
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (csr.indptr, csr.indices, users)]
        with pytest.raises(ValueError, match=r"pass seed=\.\.\. when tracing"):
            ops.sample_negatives(*fake, 12, 2)
        assert ops.sample_negatives(*fake, 12, 2, seed=1).shape == (3, 2)
    torch.compiler.reset()
    compiled = torch.compile(lambda *args: ops.sample_negatives(*args, 12, 2), fullgraph=True,
                             backend="eager")
    with pytest.raises(RuntimeError, match=r"pass seed=\.\.\. when tracing"):
        compiled(csr.indptr, csr.indices, users)


def test_compiled_with_a_new_seed_each_call_compiles_once_more(device):
    """The seed is a SymInt: from its second value on it is a dynamic input, so a compiled step
    taking a fresh seed does not recompile (and hit the recompile limit) for every one."""
    csr = random_csr(6, 12, density=0.5, seed=5, device=device)
    users = torch.tensor([0, 2, 4, 4], device=device)
    graphs = []

    def backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch.compiler.reset()
    compiled = torch.compile(
        lambda indptr, indices, users, seed: ops.sample_negatives(indptr, indices, users, 12, 3,
                                                                  seed=seed),
        fullgraph=True, backend=backend)
    for seed in range(12):
        assert torch.equal(compiled(csr.indptr, csr.indices, users, seed),
                           sample(csr, users, num_negatives=3, seed=seed))
    assert len(graphs) == 2


def test_empty_batch_and_zero_negatives(case):
    csr, users = case
    assert sample(csr, users[:0]).shape == (0, 5)
    assert sample(csr, users, num_negatives=0).shape == (users.numel(), 0)


# ------------------------------------------------------------------------------- bad input


def test_user_with_every_item_raises(case):
    csr, users = case
    full = torch.tensor([0, 3], device=users.device, dtype=users.dtype)
    with pytest.raises(ValueError, match=r"user 3 \(users\[1\]\) has interacted with all 25 items"):
        sample(csr, full)
    out = sample(csr, full, validate=False)
    assert (out[1] == -1).all() and (out[0] >= 0).all()


@pytest.mark.parametrize("user", [30, 10**6, -1, -30])
def test_user_outside_the_csr_gets_minus_one_without_validation(case, user):
    """As the docstring promises: -1 for a user id outside the CSR (past its end, or negative:
    not counted from the end), while the other users of the batch draw as they would."""
    csr, users = case
    bad = users[:6].clone()
    bad[2] = user
    with pytest.raises(IndexError, match=rf"users\[2\] = {user} is out of range"):
        sample(csr, bad)
    out = sample(csr, bad, validate=False)
    assert (out[2] == -1).all()
    kept = [0, 1, 3, 4, 5]
    assert torch.equal(out[kept], sample(csr, users[:6])[kept])


def test_unsorted_row_raises(case):
    csr, users = case
    indices = csr.indices.clone()
    begin, end = int(csr.indptr[5]), int(csr.indptr[6])
    indices[begin:end] = indices[begin:end].flip(0)
    with pytest.raises(ValueError, match="indices of CSR row 5 are not strictly ascending"):
        sample(csr._replace(indices=indices), users)


def test_repeated_ids_in_a_row_raise(device, index_dtype):
    """Strictly ascending means no repeats either: the kernel refuses the row the reference
    accepts (test_the_reference_refuses_what_would_make_it_loop_forever), naming the entry."""
    indptr, indices = (torch.tensor(t, dtype=index_dtype, device=device)
                       for t in ([0, 2, 5], [1, 3, 0, 2, 2]))
    message = ("dmfx.sample_negatives: indices of CSR row 1 are not strictly ascending (at "
               "indices[4]); sort the columns of each row (dmfx.data builds them sorted)")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ops.sample_negatives(indptr, indices, torch.tensor([0, 1], device=device), 5, 3, seed=0)
    out = reference.sample_negatives(indptr, indices, torch.tensor([1], device=device), 5, 40)
    assert set(out.flatten().tolist()) <= {1, 3, 4}


def test_out_of_range_ids_raise(case):
    csr, users = case
    bad_users = users.clone()
    bad_users[2] = 30
    with pytest.raises(IndexError, match=r"users\[2\] = 30 is out of range"):
        sample(csr, bad_users)
    indices = csr.indices.clone()
    indices[-1] = 25
    with pytest.raises(IndexError, match=r"indices\[\d+\] = 25 is out of range \[0, 25\) given by num_items"):
        sample(csr._replace(indices=indices), users)


def test_argument_errors(case):
    csr, users = case
    with pytest.raises(ValueError, match="num_items must be positive"):
        ops.sample_negatives(csr.indptr, csr.indices, users, 0, 3, seed=0)
    with pytest.raises(ValueError, match="num_negatives must be >= 0"):
        sample(csr, users, num_negatives=-1)
    with pytest.raises(TypeError, match="users must be an int32 or int64 tensor"):
        sample(csr, users.float())
    with pytest.raises(ValueError, match="give seed or generator, not both"):
        sample(csr, users, seed=1, generator=torch.Generator())
    for seed in (2**63, -2**63 - 1):  # random.getrandbits(64), say: torch's error named no seed
        with pytest.raises(ValueError, match=r"seed must lie in the int64 range .*, got "):
            sample(csr, users, seed=seed)
    # The extreme seeds themselves are taken, and each gives its own valid samples.
    top, bottom = sample(csr, users, seed=2**63 - 1), sample(csr, users, seed=-2**63)
    assert_valid(csr, users, top)
    assert_valid(csr, users, bottom)
    assert not torch.equal(top, bottom)
    with pytest.raises(ValueError, match=r"indptr\[30\] = \d+ but must be"):
        sample(csr._replace(indices=csr.indices[:-1]), users)


@pytest.mark.parametrize("name", ["indptr", "indices", "users"])
def test_meta_mixed_with_cpu_names_the_argument(name):
    """A meta tensor sends the call to the fake kernel, which must refuse the CPU tensors beside
    it rather than return uninitialised ids."""
    csr = random_csr(30, 25, density=0.4)
    args = dict(indptr=csr.indptr, indices=csr.indices, users=torch.tensor([0, 1, 2]))
    args[name] = args[name].to("meta")
    message = ("indices is on cpu but indptr is on meta" if name == "indptr"
               else f"{name} is on meta but indptr is on cpu")
    with pytest.raises(ValueError, match=message):
        ops.sample_negatives(*args.values(), 25, 4, seed=0)


# ------------------------------------------------------------- which error, when there are several


def several_errors_case(device, first):
    """Threads split a large batch; an unsorted row is read at one slot and a user with every
    item at another: the error named is the one a serial pass meets first."""
    sorted_slot, full_slot = (100, 9000) if first == "unsorted" else (9000, 100)
    csr = random_csr(300, 25, density=0.3, seed=2)  # row 3 has every item
    g = torch.Generator().manual_seed(5)
    users = torch.randint(4, 299, (10000,), generator=g)
    users[sorted_slot], users[full_slot] = 299, 3
    indices = csr.indices.clone()
    begin, end = int(csr.indptr[299]), int(csr.indptr[300])
    indices[begin:end] = indices[begin:end].flip(0)
    message = ("indices of CSR row 299 are not strictly ascending" if first == "unsorted"
               else r"user 3 \(users\[100\]\) has interacted with all 25 items")
    return (csr.indptr.to(device), indices.to(device), users.to(device)), message


@pytest.mark.parametrize("first", ["unsorted", "full"])
def test_the_first_error_in_serial_order_is_named_whatever_the_threads(first):
    (indptr, indices, users), message = several_errors_case("cpu", first)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            with pytest.raises(ValueError, match=message):
                ops.sample_negatives(indptr, indices, users, 25, 2, seed=0)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not CUDA_READY, reason="needs CUDA")
@pytest.mark.parametrize("first", ["unsorted", "full"])
def test_cuda_names_the_error_cpu_names(first):
    cpu_args, _ = several_errors_case("cpu", first)
    cuda_args, _ = several_errors_case("cuda", first)
    with pytest.raises(ValueError) as on_cpu:
        ops.sample_negatives(*cpu_args, 25, 2, seed=0)
    for _ in range(3):
        with pytest.raises(ValueError) as on_cuda:
            ops.sample_negatives(*cuda_args, 25, 2, seed=0)
        assert str(on_cuda.value) == str(on_cpu.value)


def test_empty_outputs_still_validate(case):
    """No sample to draw (no negatives, or no users) is no reason to skip the checks: the same
    errors on every device."""
    csr, users = case
    bad_users = users.clone()
    bad_users[2] = 30
    with pytest.raises(IndexError, match=r"users\[2\] = 30 is out of range"):
        sample(csr, bad_users, num_negatives=0)
    with pytest.raises(ValueError, match=r"user 3 \(users\[0\]\) has interacted with all"):
        sample(csr, torch.full_like(users[:1], 3), num_negatives=0)
    with pytest.raises(ValueError, match=r"indptr\[30\] = \d+ but must be"):
        sample(csr._replace(indices=csr.indices[:-1]), users[:0])
