"""Swap the dense first layers of a DMF port for dmfx.nn.SparseRowLinear, then train a step.

A DMF port usually feeds each user's whole rating row, made dense, to
nn.Linear(num_items, hidden, bias=False) (and each item's column to nn.Linear(num_users, ...)).
SparseRowLinear computes the same from the sparse rows, reading only the rated entries;
from_linear copies the trained weights, so nothing is retrained.
"""
import scipy.sparse as sp
import torch
from torch import nn

from dmfx.nn import CosineNCELoss, SparseRowLinear

torch.manual_seed(0)
num_users, num_items, hidden = 50, 200, 16
Y = sp.random(num_users, num_items, density=0.05, format="csr", dtype="float32", random_state=0)
user_first = nn.Linear(num_items, hidden, bias=False)  # the port's layers, trained or not
item_first = nn.Linear(num_users, hidden, bias=False)

users_layer = SparseRowLinear.from_linear(user_first).bind(Y)  # rows of Y: users
items_layer = SparseRowLinear.from_linear(item_first).bind(Y.T)  # rows of Y^T: items
observed = Y.tocoo()  # a batch of rated pairs (a trainer would add sampled unrated ones)
batch_users, batch_items = observed.row[:5].tolist(), observed.col[:5].tolist()
users, items = torch.tensor(batch_users), torch.tensor(batch_items)
# what the port fed to nn.Linear, dense rows of Y and of Y^T, gives the same outputs
dense_user_rows = torch.from_numpy(Y[batch_users].toarray())
dense_item_rows = torch.from_numpy(Y.T.tocsr()[batch_items].toarray())
torch.testing.assert_close(users_layer(users), user_first(dense_user_rows))
torch.testing.assert_close(items_layer(items), item_first(dense_item_rows))

loss_fn = CosineNCELoss(mu=1e-6)
target = torch.from_numpy(observed.data[:5])  # the pairs' ratings, in (0, 1)
optimizer = torch.optim.Adam([*users_layer.parameters(), *items_layer.parameters()], lr=0.01)
before = loss_fn(users_layer(users), items_layer(items), target)
optimizer.zero_grad()
before.backward()
optimizer.step()
after = loss_fn(users_layer(users), items_layer(items), target)
print(f"same outputs as nn.Linear; one Adam step: loss {before.item():.6f} -> {after.item():.6f}")
