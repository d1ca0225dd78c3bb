"""The SEPFL pair classifier (SEPFL.md §4) and its two execution paths.

One set of weights, two ways to run it:

* the **reference path**, exactly as §4 is written: :meth:`PairClassifier.forward`
  embeds both samples of each pair from their gathered neighbour features and
  classifies the pair. Training uses its parts (:meth:`~PairClassifier.embed`,
  :meth:`~PairClassifier.classify`) with autograd.
* the **inference path**: :meth:`~PairClassifier.node_embeddings` computes the
  structure-enhanced feature ``e_u`` once per sample, with the first
  channel-mixing Linear factorised into two per-sample projections gathered by
  the native :func:`sepfl.ops.gather_add`; :meth:`~PairClassifier.score_pairs`
  then classifies any list of pairs from those embeddings. In eval mode both
  paths give the same logits up to float rounding.

Parameter names follow the authors' public checkpoint, so its ``state_dict``
loads with ``strict=True``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Mapping

import torch
from torch import nn

from sepfl import ops
from sepfl._validate import (Array, as_indices, as_values, check_finite, check_index_range,
                             check_positive_int, is_tensor)

__all__ = ["PairClassifier", "bf16_autocast"]


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device``'s type when ``enabled``, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _mlp(width_in: int, width_hidden: int, width_out: int, dropout: float,
         final_dropout: bool) -> nn.Sequential:
    """Linear, GELU, Dropout, Linear[, Dropout]: the Linears sit at indices 0 and 3."""
    layers = [nn.Linear(width_in, width_hidden), nn.GELU(), nn.Dropout(dropout),
              nn.Linear(width_hidden, width_out)]
    if final_dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class PairClassifier(nn.Module):
    """Same / different identity classifier for pairs of samples (SEPFL §4).

    Parameters
    ----------
    dim : int
        Feature dimension D.
    k : int
        Neighbours per sample, self included (the kNN table's width).
    dropout : float
        Dropout probability of every Dropout layer (0.2 in SEPFL).

    Notes
    -----
    Modules, named as in the authors' checkpoint: ``channel_mix``
    (Linear 2D→4D, GELU, Dropout, Linear 4D→2D, Dropout), ``channel_bn``,
    ``token_mix`` (Linear k→2k, GELU, Dropout, Linear 2k→k, Dropout),
    ``token_bn``, ``attention_bn``, ``attention_layer`` (Linear 2D→D, GELU,
    Dropout, Linear D→1) and ``classifier`` (BN 4D, Linear 4D→2D, BN, GELU,
    Dropout, Linear 2D→D, BN, GELU, Dropout, Linear D→2). BatchNorms over
    tokens normalise the 2D channels, with statistics over batch and tokens.
    """

    def __init__(self, dim: int, k: int, dropout: float = 0.2):
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.k = check_positive_int(k, "k")
        width = 2 * self.dim
        self.channel_mix = _mlp(width, 2 * width, width, dropout, final_dropout=True)
        self.channel_bn = nn.BatchNorm1d(width)
        self.token_mix = _mlp(self.k, 2 * self.k, self.k, dropout, final_dropout=True)
        self.token_bn = nn.BatchNorm1d(width)
        self.attention_bn = nn.BatchNorm1d(width)
        self.attention_layer = _mlp(width, self.dim, 1, dropout, final_dropout=False)
        self.classifier = nn.Sequential(
            nn.BatchNorm1d(2 * width), nn.Linear(2 * width, width), nn.BatchNorm1d(width),
            nn.GELU(), nn.Dropout(dropout), nn.Linear(width, self.dim),
            nn.BatchNorm1d(self.dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(self.dim, 2))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> "PairClassifier":
        """A classifier with D and k read off the weight shapes, loaded with ``strict=True``.

        Parameters
        ----------
        state_dict : mapping of str to Tensor
            E.g. the authors' checkpoint: ``channel_mix.0.weight`` is [4D, 2D]
            and ``token_mix.0.weight`` is [2k, k].
        """
        try:
            dim = state_dict["channel_mix.0.weight"].shape[1] // 2
            k = state_dict["token_mix.0.weight"].shape[1]
        except (KeyError, AttributeError, IndexError) as err:
            raise ValueError(f"not a PairClassifier state_dict: {err!r}") from None
        model = cls(int(dim), int(k))
        model.load_state_dict(state_dict, strict=True)
        return model

    @torch.no_grad()
    def init_mean_attention(self) -> "PairClassifier":
        """Start every neighbour weight at 1/k: zero the last attention Linear's weights, bias 1/k.

        The embedding is then ``e_u = [f_u ‖ (1/k) Σ_j F_u[j]]`` whatever the
        mixing layers hold, in train and eval mode alike (the Dropout before
        that Linear meets zero weights). The weights still receive gradients,
        so training moves the attention away from the plain mean. Returns self.
        """
        last = self.attention_layer[3]
        last.weight.zero_()
        last.bias.fill_(1.0 / self.k)
        return self

    # ----------------------------------------------------------------- reference path

    def _check_gathered(self, f: torch.Tensor, nbr_feats: torch.Tensor) -> None:
        ok = (f.ndim == 2 and f.shape[1] == self.dim
              and tuple(nbr_feats.shape) == (f.shape[0], self.k, self.dim))
        if not ok:
            raise ValueError(f"expected features [B, {self.dim}] and neighbour features "
                             f"[B, {self.k}, {self.dim}], got {tuple(f.shape)} and "
                             f"{tuple(nbr_feats.shape)}")

    @staticmethod
    def _tokens(f: torch.Tensor, nbr_feats: torch.Tensor) -> torch.Tensor:
        """§4 step 1: ``T = [f_u ‖ F_u[j]]_j`` [B, k, 2D]."""
        return torch.cat([f.unsqueeze(1).expand_as(nbr_feats), nbr_feats], dim=2)

    def _hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first channel-mix Linear, GELU and Dropout: [B, k, 2D] → [B, k, 4D]."""
        return self.channel_mix[2](self.channel_mix[1](self.channel_mix[0](tokens)))

    def _embed_hidden(self, f: torch.Tensor, nbr_feats: torch.Tensor,
                      hidden: torch.Tensor) -> torch.Tensor:
        """§4 steps 2-6 given the first channel-mix activations ``hidden`` [B, k, 4D].

        ``f`` [B, D], ``nbr_feats`` [B, k, D] → ``e`` [B, 2D].
        """
        mixed = self.channel_mix[4](self.channel_mix[3](hidden))
        # Channels-first [B, 2D, k] from here: token_mix's input layout, and contiguous
        # BatchNorm input runs about twice as fast on CPU as a transposed view.
        tokens = torch.cat([f.unsqueeze(2).expand(-1, -1, self.k), nbr_feats.transpose(1, 2)],
                           dim=1)
        x = tokens + self.channel_bn(mixed.transpose(1, 2).contiguous())
        x = x + self.token_bn(self.token_mix(x))
        x = self.attention_bn(x)
        weights = self.attention_layer(x.transpose(1, 2)).squeeze(2)
        summary = torch.einsum("bk,bkd->bd", weights, nbr_feats.to(weights.dtype))
        return torch.cat([f.to(summary.dtype), summary], dim=1)

    def embed(self, f: torch.Tensor, nbr_feats: torch.Tensor) -> torch.Tensor:
        """Structure-enhanced features ``e_u = [f_u ‖ Σ_j w_j F_u[j]]`` (§4 steps 1-6).

        Parameters
        ----------
        f : float Tensor [B, D]
            Features of the B samples.
        nbr_feats : float Tensor [B, k, D]
            Features of each sample's kNN entries in rank order, self included
            (zeros for a missing neighbour).

        Returns
        -------
        e : Tensor [B, 2D]
            Differentiable. In train mode the BatchNorms use this batch's statistics.
        """
        self._check_gathered(f, nbr_feats)
        return self._embed_hidden(f, nbr_feats, self._hidden(self._tokens(f, nbr_feats)))

    def classify(self, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
        """Pair logits from the two embeddings: ``classifier([e_a ‖ e_b])``.

        Parameters
        ----------
        e_a, e_b : float Tensor [P, 2D]

        Returns
        -------
        logits : Tensor [P, 2]
            Class 1 is "same identity".
        """
        return self.classifier(torch.cat([e_a, e_b], dim=1))

    def forward(self, feat_a: torch.Tensor, nbr_feats_a: torch.Tensor, feat_b: torch.Tensor,
                nbr_feats_b: torch.Tensor) -> torch.Tensor:
        """Per-pair reference forward, as §4 is written.

        Parameters
        ----------
        feat_a, feat_b : float Tensor [B, D]
            Features of the two samples of each pair.
        nbr_feats_a, nbr_feats_b : float Tensor [B, k, D]
            Their neighbour features (see :meth:`embed`).

        Returns
        -------
        logits : Tensor [B, 2]

        Notes
        -----
        As in the authors' code, ``a`` and ``b`` are embedded in two separate
        calls, so in train mode each side's BatchNorms see only that side's batch.
        """
        return self.classify(self.embed(feat_a, nbr_feats_a), self.embed(feat_b, nbr_feats_b))

    # ----------------------------------------------------------------- inference path

    def _check_inference(self, device: torch.device) -> None:
        if self.training:
            raise RuntimeError("the inference path needs eval mode: call model.eval() first")
        weight_device = self.channel_mix[0].weight.device
        if weight_device != device:
            raise ValueError(f"the model is on {weight_device} but the inputs are on {device}")

    def _project(self, features: torch.Tensor, weight: torch.Tensor, batch_size: int,
                 bf16: bool) -> torch.Tensor:
        """``features @ weight.T`` as float32 [N, H], computed batch by batch."""
        out = torch.empty((features.shape[0], weight.shape[0]), dtype=torch.float32,
                          device=features.device)
        with bf16_autocast(features.device, bf16):
            for start in range(0, features.shape[0], batch_size):
                out[start:start + batch_size] = nn.functional.linear(
                    features[start:start + batch_size], weight)
        return out

    def _gathered_hidden(self, features: torch.Tensor, nbrs: torch.Tensor, batch_size: int,
                         bf16: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function of node ids [B] giving the first channel-mix activations [B, k, 4D].

        ``W [f_u ‖ f_j] + b = W_c f_u + W_n f_j + b``: the two projections are
        computed once for every node and the native kernel adds, biases and
        applies GELU per token. Dropout is the identity in eval mode.
        """
        first = self.channel_mix[0]
        centre = self._project(features, first.weight[:, :self.dim], batch_size, bf16)
        neighbour = self._project(features, first.weight[:, self.dim:], batch_size, bf16)
        bias = first.bias.detach().to(torch.float32)
        return lambda ids: ops.gather_add(centre, neighbour, nbrs, ids, bias, gelu=True)

    @torch.no_grad()
    def node_embeddings(self, features: Array, nbrs: Array, batch_size: int = 2048,
                        bf16: bool = False, factorised: bool = True) -> torch.Tensor:
        """``e_u`` for every sample, computed once per sample (eval mode only).

        Parameters
        ----------
        features : float [N, D]
            Tensor (any device; the model must be on the same one) or numpy array.
        nbrs : int [N, k]
            kNN table, self at rank 0; -1 marks a missing neighbour (zero feature).
        batch_size : int
            Samples embedded at a time; peak working memory is about
            ``batch_size * k * 10 D * 4`` bytes (≈ 1.7 GB for 2048, k = 80, D = 256).
        bf16 : bool
            Run the dense layers under bfloat16 autocast (the native kernels
            and the output stay float32).
        factorised : bool
            Use the factorised first Linear. It needs two float32 [N, 4D]
            projections held for the whole call (8 · N · 4D bytes: 4.8 GB for
            N = 584K, D = 256; 43 GB for 5.2M); ``False`` applies the Linear to
            each batch's gathered tokens instead: no per-node storage, about
            1.2x slower on a 2-core CPU in float32 (the same speed under bf16,
            where the remaining layers dominate).

        Returns
        -------
        e : float32 Tensor [N, 2D]
            On the device of ``features``.

        Raises
        ------
        RuntimeError
            The model is in train mode.
        TypeError, ValueError, IndexError
            Wrong dtypes, shapes (D or k not the model's), non-finite features,
            or neighbour indices outside ``[-1, N)``.
        """
        features = as_values(features, "features", 2, shape=(None, self.dim))
        features = features if is_tensor(features) else torch.from_numpy(features)
        nbrs = as_indices(nbrs, "nbrs", 2, shape=(features.shape[0], self.k))
        nbrs = (nbrs if is_tensor(nbrs) else torch.from_numpy(nbrs)).to(features.device)
        batch_size = check_positive_int(batch_size, "batch_size")
        check_finite(features, "features")
        check_index_range(nbrs, "nbrs", features.shape[0], allow_missing=True)
        self._check_inference(features.device)
        n = features.shape[0]
        out = torch.empty((n, 2 * self.dim), dtype=torch.float32, device=features.device)
        if factorised:
            gathered_hidden = self._gathered_hidden(features, nbrs, batch_size, bf16)
        for start in range(0, n, batch_size):
            ids = torch.arange(start, min(start + batch_size, n), device=features.device)
            f, nbr_feats = features[ids], ops.gather(features, nbrs, ids)
            with bf16_autocast(features.device, bf16):
                hidden = gathered_hidden(ids) if factorised \
                    else self._hidden(self._tokens(f, nbr_feats))
                out[start:start + ids.shape[0]] = self._embed_hidden(f, nbr_feats, hidden)
        return out

    @torch.no_grad()
    def score_pairs(self, e: torch.Tensor, src: Array, dst: Array, batch_size: int = 65536,
                    bf16: bool = False) -> torch.Tensor:
        """P(same identity) of each pair from per-sample embeddings (eval mode only).

        Parameters
        ----------
        e : float Tensor [N, 2D]
            From :meth:`node_embeddings`.
        src, dst : int [P]
            Pair endpoints in ``[0, N)``.
        batch_size : int
            Pairs classified at a time.
        bf16 : bool
            Run the classifier under bfloat16 autocast.

        Returns
        -------
        prob : float32 Tensor [P]
            ``softmax(logits)[:, 1]``, on the device of ``e``.
        """
        e = as_values(e, "e", 2, shape=(None, 2 * self.dim))
        e = e if is_tensor(e) else torch.from_numpy(e)
        src = as_indices(src, "src", 1)
        dst = as_indices(dst, "dst", 1, shape=src.shape)
        src, dst = (torch.as_tensor(x).to(e.device) for x in (src, dst))
        batch_size = check_positive_int(batch_size, "batch_size")
        check_index_range(src, "src", e.shape[0])
        check_index_range(dst, "dst", e.shape[0])
        self._check_inference(e.device)
        prob = torch.empty(src.shape[0], dtype=torch.float32, device=e.device)
        for start in range(0, src.shape[0], batch_size):
            a, b = src[start:start + batch_size], dst[start:start + batch_size]
            with bf16_autocast(e.device, bf16):
                logits = self.classify(e[a], e[b])
            prob[start:start + a.shape[0]] = torch.softmax(logits.float(), dim=1)[:, 1]
        return prob
