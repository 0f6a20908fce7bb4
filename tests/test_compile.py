"""The ops inside torch.compile(fullgraph=True): a small DMF step, compiled vs eager."""
import pytest
import torch
from torch import nn

from dmfx import ops
from conftest import random_csr


class Tower(nn.Module):
    """First layer on the sparse rows, then Linear + ReLU: a DMF tower of depth two."""

    def __init__(self, num_inputs, hidden, out):
        super().__init__()
        self.first = nn.Parameter(torch.randn(num_inputs, hidden, dtype=torch.float64) * 0.3)
        self.second = nn.Linear(hidden, out, dtype=torch.float64)

    def forward(self, csr, rows):
        h = torch.relu(ops.sparse_rows_matmul(csr.indptr, csr.indices, csr.values, rows, self.first))
        return torch.relu(self.second(h))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_step_matches_eager(device, backend):
    torch.manual_seed(0)
    y = random_csr(10, 14, density=0.4, device=device)
    yt = random_csr(14, 10, density=0.4, seed=1, device=device)  # stands in for Y transposed
    users_tower = Tower(14, 9, 4).to(device)
    items_tower = Tower(10, 9, 4).to(device)

    def step(users, items, target):
        negatives = ops.sample_negatives(y.indptr, y.indices, users, 14, 2, seed=3)
        all_users = torch.cat([users, users.repeat_interleave(2)])
        all_items = torch.cat([items, negatives.flatten()])
        all_target = torch.cat([target, target.new_zeros(negatives.numel())])
        p = users_tower(y, all_users)
        q = items_tower(yt, all_items)
        return ops.cosine_nce_loss(p, q, all_target)

    users = torch.tensor([0, 1, 2, 5, 5, 9], device=device)  # user 0 has no ratings
    items = torch.tensor([3, 0, 13, 7, 7, 2], device=device)
    target = torch.tensor([0.2, 1.0, 0.6, 0.8, 0.8, 0.4], dtype=torch.float64, device=device)
    compiled = torch.compile(step, fullgraph=True, backend=backend)

    def loss_and_grads(fn):
        for p in (*users_tower.parameters(), *items_tower.parameters()):
            p.grad = None
        loss = fn(users, items, target)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in (*users_tower.parameters(),
                                                         *items_tower.parameters())]

    eager_loss, eager_grads = loss_and_grads(step)
    compiled_loss, compiled_grads = loss_and_grads(compiled)
    torch.testing.assert_close(compiled_loss, eager_loss)
    assert any(g.abs().sum() > 0 for g in eager_grads)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e)


def test_sparse_grad_runs_eagerly_inside_compiled_code(device):
    y = random_csr(10, 14, density=0.4, device=device)
    weight = torch.randn(14, 6, dtype=torch.float64, device=device, requires_grad=True)
    rows = torch.tensor([0, 3, 3, 9], device=device)

    def loss(w):
        h = ops.sparse_rows_matmul(y.indptr, y.indices, y.values, rows, w, sparse_grad=True)
        return torch.relu(h).sum()

    eager = torch.autograd.grad(loss(weight), weight)[0]
    compiled = torch.autograd.grad(torch.compile(loss, backend="aot_eager")(weight), weight)[0]
    assert compiled.layout == torch.sparse_coo
    torch.testing.assert_close(compiled.to_dense(), eager.to_dense())
    # fullgraph cannot take the eager call: the error names it (a function of its own, as
    # compiled frames are cached by code object)
    def whole(w):
        return ops.sparse_rows_matmul(y.indptr, y.indices, y.values, rows, w,
                                      sparse_grad=True).sum()

    with pytest.raises(Exception, match="_sparse_grad_rows_matmul"):
        torch.compile(whole, fullgraph=True, backend="aot_eager")(weight)


def test_export_matches_eager(device):
    """torch.export traces the two towers' first layers and the loss into one program."""
    torch.manual_seed(0)
    y = random_csr(10, 14, density=0.4, device=device)
    yt = random_csr(14, 10, density=0.4, seed=1, device=device)
    users_tower = Tower(14, 9, 4).to(device)
    items_tower = Tower(10, 9, 4).to(device)

    class Score(nn.Module):
        def __init__(self):
            super().__init__()
            self.users, self.items = users_tower, items_tower

        def forward(self, users, items, target):
            return ops.cosine_nce_loss(self.users(y, users), self.items(yt, items), target)

    users = torch.tensor([0, 1, 2, 5, 5, 9], device=device)
    items = torch.tensor([3, 0, 13, 7, 7, 2], device=device)
    target = torch.tensor([0.2, 1.0, 0.6, 0.0, 0.8, 0.0], dtype=torch.float64, device=device)
    model = Score()
    program = torch.export.export(model, (users, items, target))
    assert any(node.target is torch.ops.dmfx.cosine_nce_loss.default
               for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(users, items, target), model(users, items, target))


def test_fake_kernels_refuse_tensors_on_two_devices():
    """Tracing sees only the fake kernels, so they must check devices as the real kernels do:
    here fake CUDA tensors (no GPU needed) beside fake CPU ones."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    y = random_csr(10, 14, density=0.4)
    with FakeTensorMode() as mode:
        indptr, indices, values = (mode.from_tensor(t) for t in (y.indptr, y.indices, y.values))
        rows = torch.tensor([0, 3], device="cuda")
        weight = torch.randn(14, 4, dtype=torch.float64)
        with pytest.raises(ValueError, match="rows is on cuda:0 but weight is on cpu"):
            ops.sparse_rows_matmul(indptr, indices, values, rows, weight)
        p = torch.randn(2, 4, dtype=torch.float64)
        target = torch.zeros(2, dtype=torch.float64, device="cuda")
        with pytest.raises(ValueError, match="target is on cuda:0 but p is on cpu"):
            ops.cosine_nce_loss(p, p, target)
        with pytest.raises(ValueError, match="explicit_target is on cuda:0 but logits is on cpu"):
            ops.hybrid_bce_loss(p[:, 0], p[:, 1], target, 0.6)
        with pytest.raises(ValueError, match="users is on cuda:0 but indptr is on cpu"):
            ops.sample_negatives(indptr, indices, rows, 14, 2, seed=0)
        state = [torch.zeros(14, 4, dtype=torch.float64) for _ in range(3)]
        with pytest.raises(ValueError, match="rows is on cuda:0 but weight is on cpu"), \
                torch.no_grad():
            ops.row_sparse_adam_(*state, rows, p, lr=0.1, step=1)
