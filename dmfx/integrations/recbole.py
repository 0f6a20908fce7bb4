"""RecBole 1.2.1's DMF with dmfx's first layers, inside RecBole's own pipeline.

RecBole's ``DMF`` builds the dense ``B x n_items`` (user tower) and ``B x n_users`` (item tower)
input of every batch from padded history tables and multiplies it by an ``nn.Linear``.
:class:`DmfxDMF` is that model with the two first layers replaced by
:class:`dmfx.nn.SparseRowLinear` bound to RecBole's interaction matrix (and its transpose) as
CSR, so a batch row costs its stored entries, not the matrix width. The rest is RecBole's: the
config keys (``DMF.yaml``), the towers, the score, the loss, full-sort evaluation, the dataset,
dataloaders, trainer and evaluator.

Same model, same numbers:

* Init: RecBole's ``DMF.__init__`` builds and initialises the model, then the two layers are
  converted with ``SparseRowLinear.from_linear`` (which draws nothing), so at one seed DmfxDMF
  starts from exactly RecBole DMF's weights and consumes the random streams as it does.
* Loss: RecBole's DMF is not the paper's cosine + mu-clamp + normalized cross-entropy. It scores
  with a dot product (its docstring: "for a better performance and stability") and trains
  ``BCEWithLogitsLoss(score, label / max_rating)``. :func:`dmfx.ops.cosine_nce_loss` would change
  the model, so RecBole's semantics are kept, computed by dmfx's fused
  :func:`dmfx.ops.hybrid_bce_loss` with ``eta = 1``, which is exactly binary cross-entropy with
  logits against one target (mean over the batch). Two differences remain: the fused loss
  refuses a target outside [0, 1] (``inter_matrix_type: rating`` with negative ratings, which
  RecBole trains on silently), and under ``enable_amp`` the first layers and the loss run in
  float32 (dmfx's ops under autocast) where RecBole's run in half precision, so AMP runs give
  other numbers.
* Checkpoints: the first layers' ``weight`` is stored ``[in_features, out_features]``
  (SparseRowLinear's layout); ``DmfxDMF.load_state_dict`` also takes a RecBole DMF state dict
  (``nn.Linear``'s ``[out, in]`` is transposed on load), so a trained RecBole DMF converts
  without retraining, unless a first layer is square (then it raises: see
  :class:`dmfx.nn.SparseRowLinear`'s notes on loading).

Usage (RecBole 1.2.1's ``recbole.quick_start.run_recbole`` looks a model up by name among
RecBole's own, so it cannot take this class; :func:`run_recbole` here is the same pipeline for a
model class or name)::

    from dmfx.integrations.recbole import DmfxDMF, run_recbole
    result = run_recbole(model=DmfxDMF, dataset="ml-100k", config_dict={"epochs": 20})
    print(result["test_result"])          # RecBole's metrics, e.g. hit@10, ndcg@10

or with RecBole's pieces, as its custom-model docs show, using :func:`make_config` (which adds
RecBole's DMF defaults, read by model name otherwise) and :func:`load_best_model`::

    config = make_config(DmfxDMF, "ml-100k", config_dict={"epochs": 20})
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = DmfxDMF(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)
    trainer.fit(train_data, valid_data)
    load_best_model(trainer)
    print(trainer.evaluate(test_data, load_best_model=False))

torch >= 2.6: RecBole's ``Trainer.evaluate(load_best_model=True)`` (and ``resume_checkpoint``)
call ``torch.load`` on a checkpoint that pickles RecBole's ``Config``, which torch's default
``weights_only=True`` refuses. :func:`load_best_model` loads the checkpoint the trainer wrote with
``weights_only=False`` and restores the model as ``evaluate`` would; then evaluate with
``load_best_model=False``. Nothing in torch or RecBole is patched.

RecBole 1.2.1 needs numpy < 2 and ray 2.6 (``pkg_resources``, so setuptools < 81), pins that
clash with dmfx's main environment: keep it in its own (``make recbole-check`` builds
``.venv-recbole``).
"""
from __future__ import annotations

import os
from logging import getLogger
from typing import Optional, Union

import torch
from torch import Tensor, nn

try:
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender.dmf import DMF
    from recbole.utils import get_trainer, init_logger, init_seed
except ImportError as exc:
    raise ImportError(
        "dmfx.integrations.recbole needs RecBole 1.2.1, whose pins (numpy<2, pandas<2.3, "
        "scipy<1.14, setuptools<81 for ray 2.6) do not belong in dmfx's main environment. "
        "`make recbole-check` builds one for it (.venv-recbole); by hand: "
        "pip install recbole==1.2.1 'numpy<2' 'pandas<2.3' 'scipy<1.14' "
        f"'setuptools>=77.0.3,<81' into a separate virtual environment ({exc})"
    ) from exc

from .. import ops
from ..data import as_csr
from ..nn import SparseRowLinear

__all__ = ["DmfxDMF", "make_config", "load_best_model", "run_recbole", "DMF_DEFAULTS"]

#: RecBole's own defaults for DMF. RecBole reads ``properties/model/<name>.yaml`` by the model's
#: class name, so a model named DmfxDMF would start without them.
DMF_DEFAULTS = os.path.join(os.path.dirname(recbole.__file__), "properties", "model", "DMF.yaml")


class _BCEWithLogits(nn.Module):
    """``nn.BCEWithLogitsLoss()(logits, target)``, computed by dmfx's fused op."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        # eta = 1: the implicit term alone, i.e. plain BCE against `target`.
        return ops.hybrid_bce_loss(logits, target, target, 1.0)


class DmfxDMF(DMF):
    """RecBole's DMF whose first tower layers are :class:`dmfx.nn.SparseRowLinear`.

    Takes RecBole's ``(config, dataset)`` and DMF's config keys (``inter_matrix_type``,
    ``user_embedding_size``, ``item_embedding_size``, ``user_hidden_size_list``,
    ``item_hidden_size_list``). ``user_linear`` reads rows of the training interaction matrix
    (users x items), ``item_linear`` rows of its transpose; both are bound, so they are called on
    ids alone.

    Duplicate user-item pairs are refused: RecBole's dense input keeps one of their values
    (whichever ``index_put_`` writes last) where a CSR sums them, so the two models would differ.
    Set RecBole's ``rm_dup_inter: first`` (or ``last``) for such data.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        matrix = self.interaction_matrix  # scipy CSR, n_users x n_items, duplicates summed
        if matrix.nnz != dataset.inter_num:
            raise ValueError(
                f"DmfxDMF: the training data holds {dataset.inter_num - matrix.nnz} duplicate "
                "user-item pairs; RecBole's DMF keeps one value of each where a sparse matrix "
                "sums them. Set `rm_dup_inter: first` (or `last`) in the RecBole config.")
        self.user_linear = SparseRowLinear.from_linear(self.user_linear).bind(as_csr(matrix))
        self.item_linear = SparseRowLinear.from_linear(self.item_linear).bind(
            as_csr(matrix, transpose=True))
        # The padded history tables only fed the dense input that the bound CSRs replace.
        del self.history_user_id, self.history_user_value
        del self.history_item_id, self.history_item_value
        self.bce_loss = _BCEWithLogits()

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        user = self.user_fc_layers(self.user_linear(user))
        item = self.item_fc_layers(self.item_linear(item))
        return torch.mul(user, item).sum(dim=1)

    def get_user_embedding(self, user: Tensor) -> Tensor:
        """First-layer output of the user tower, ``[B, user_embedding_size]``."""
        return self.user_linear(user)

    def get_item_embedding(self) -> Tensor:
        """Every item through the item tower, ``[n_items, hidden]`` (cached by RecBole's
        ``full_sort_predict`` for an evaluation)."""
        items = torch.arange(self.n_items, device=self.item_linear.weight.device)
        return self.item_fc_layers(self.item_linear(items))


def make_config(model: Union[str, type] = DmfxDMF, dataset: Optional[str] = None,
                config_file_list: Optional[list] = None,
                config_dict: Optional[dict] = None) -> Config:
    """RecBole's ``Config`` for ``model``; for :class:`DmfxDMF` (or a subclass), with RecBole's DMF
    defaults under the given files and dict (which override them)."""
    files = list(config_file_list or [])
    if isinstance(model, type) and issubclass(model, DmfxDMF):
        files.insert(0, DMF_DEFAULTS)
    return Config(model=model, dataset=dataset, config_file_list=files or None,
                  config_dict=config_dict)


def load_best_model(trainer, model_file: Optional[str] = None) -> None:
    """Restore ``trainer.model`` from a RecBole checkpoint, as ``Trainer.evaluate(
    load_best_model=True)`` does, on any torch.

    ``model_file`` defaults to the checkpoint the trainer saved (its best epoch). RecBole's
    checkpoints pickle its ``Config``, so they need ``torch.load(weights_only=False)``, which
    runs pickle: pass only files you trust, such as those your own trainer wrote.
    """
    path = model_file or trainer.saved_model_file
    checkpoint = torch.load(path, map_location=trainer.device, weights_only=False)
    trainer.model.load_state_dict(checkpoint["state_dict"])
    trainer.model.load_other_parameter(checkpoint.get("other_parameter"))
    getLogger().info(f"Loading model structure and parameters from {path}")


def run_recbole(model: Union[str, type] = DmfxDMF, dataset: Optional[str] = None,
                config_file_list: Optional[list] = None, config_dict: Optional[dict] = None,
                saved: bool = True) -> dict:
    """``recbole.quick_start.run_recbole`` for a model class or name, on any torch.

    RecBole's pipeline step by step (seeds, logger, dataset, split, model, ``get_trainer``,
    ``fit``, test evaluation) with :func:`make_config` and, when ``saved``, the best epoch
    restored by :func:`load_best_model`. Single process; RecBole's FLOPs count is left out (a
    log line). Returns RecBole's result dict: ``best_valid_score``, ``valid_score_bigger``,
    ``best_valid_result``, ``test_result``.
    """
    config = make_config(model, dataset, config_file_list, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = config.model_class(config, train_data._dataset).to(config["device"])
    logger.info(net)

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"])
    if saved:
        load_best_model(trainer)
    test_result = trainer.evaluate(test_data, load_best_model=False,
                                   show_progress=config["show_progress"])
    logger.info(f"best valid : {best_valid_result}")
    logger.info(f"test result: {test_result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }
