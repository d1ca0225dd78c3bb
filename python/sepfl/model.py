"""The SEPFL pair classifier (SEPFL.md §4) and its two execution paths.

One set of weights, two ways to run it:

* the **reference path**, exactly as §4 is written: :meth:`PairClassifier.forward`
  embeds both samples of each pair from their gathered neighbour features and
  classifies the pair. Training uses its parts (:meth:`~PairClassifier.embed`,
  :meth:`~PairClassifier.classify`) with autograd.
* the **inference path**: :meth:`~PairClassifier.node_embeddings` computes the
  structure-enhanced feature ``e_u`` once per sample, and
  :meth:`~PairClassifier.score_pairs` classifies any list of pairs from those
  embeddings. It runs the same network rearranged for speed: every BatchNorm
  folded into a neighbouring Linear (:class:`_Folded`, cached on the model
  until a weight changes), the first channel-mixing Linear factorised into two
  per-sample projections, node tiles sized to the CPU's L2 cache, and
  bfloat16 wherever the hardware runs it fastest (:func:`fast_bf16`). In eval
  mode and float32 both paths give the same logits up to float rounding.

Parameter names follow the authors' public checkpoint, so its ``state_dict``
loads with ``strict=True``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from sepfl import ops
from sepfl.device import cpu_bf16_units, free_memory
from sepfl.edges import JOIN_ABOVE, NUM_STATISTICS, EdgeHead
from sepfl._validate import (Array, as_indices, as_values, check_finite, check_index_range,
                             check_positive_int, to_tensor)

__all__ = ["PairClassifier", "bf16_autocast", "cpu_tile", "fast_bf16"]

log = logging.getLogger("sepfl")


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
    ``edge_head`` is None until training adds one (:class:`sepfl.edges.EdgeHead`,
    the default scheme's edge scorer); its weights are saved as ``edge_head.*``.
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
        self.edge_head: Optional[EdgeHead] = None

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
        head = state_dict.get("edge_head.net.0.weight")
        if head is not None and head.shape[1] != NUM_STATISTICS:
            # a head over another set of edge statistics cannot score today's
            log.warning("this checkpoint's edge head reads %d edge statistics, this version "
                        "computes %d: dropping it (the model clusters with scheme='sepfl'; "
                        "retrain for the edges scheme)", head.shape[1], NUM_STATISTICS)
            state_dict = {name: value for name, value in state_dict.items()
                          if not name.startswith("edge_head.")}
        elif head is not None:
            if "edge_head.same_share" not in state_dict:
                state_dict = _one_calibration_graph(state_dict)
            model.edge_head = EdgeHead(int(head.shape[0]),
                                       views=int(state_dict["edge_head.same_share"].numel()))
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

    def embed_hidden(self, f: torch.Tensor, nbr_feats: torch.Tensor,
                     hidden: torch.Tensor) -> torch.Tensor:
        """§4 steps 2-6 given the first channel-mix activations ``hidden`` [B, k, 4D] (after
        its GELU), however they were computed (e.g. by :func:`sepfl.ops.gather_add` from
        per-sample projections).

        ``f`` [B, D], ``nbr_feats`` [B, k, D] → ``e`` [B, 2D]; not checked.
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
        return self.embed_hidden(f, nbr_feats, self._hidden(self._tokens(f, nbr_feats)))

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

    def _folded_weights(self, dtype: torch.dtype) -> "_Folded":
        """The eval-mode network with its BatchNorms folded, in ``dtype``, cached on the model.

        The cache is keyed on every parameter's and buffer's storage and
        autograd version counter, so an optimiser step, ``load_state_dict``,
        ``model.to(...)`` or any in-place change made outside ``.data`` rebuilds it.
        (Inference-mode tensors have no version counter: for them only a new
        storage is seen.)
        """
        tensors = list(itertools.chain(self.parameters(), self.buffers()))
        key = (dtype, tensors[0].device,
               tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors))
        folded = self.__dict__.get("_folded")
        if folded is None or folded.key != key:
            folded = _Folded.of(self, dtype, key)
            self.__dict__["_folded"] = folded
        return folded

    @torch.no_grad()
    def node_embeddings(self, features: Array, nbrs: Array, batch_size: int = 2048,
                        bf16: Optional[bool] = None, factorised: Optional[bool] = None,
                        progress: bool = False, nodes: Optional[Array] = None) -> torch.Tensor:
        """``e_u`` for every sample (or for ``nodes`` only), once per sample (eval mode only).

        The fast inference path: BatchNorms folded into the Linears (cached on
        the model), the first channel-mix Linear factorised into per-sample
        projections, and the network run over small node tiles laid out
        token-major (row ``j * B + b`` is token j of tile node b), so the channel
        mix and attention are plain GEMMs over rows and the token mix one GEMM
        from the left, with no transposed copy between layers. On the CPU a tile
        holds as many nodes as keep its [tile, k, 4D] hidden activations in
        about 2 MiB (a core's L2) per thread, or with the AMX steps its tokens in
        about 4 MiB (:func:`cpu_tile`); on a GPU a tile is the whole batch.

        Parameters
        ----------
        features : float [N, D]
            Tensor (any device; the model must be on the same one) or numpy array.
        nbrs : int [N, k]
            kNN table, self at rank 0; -1 marks a missing neighbour (zero feature).
        batch_size : int
            Samples per batch: their centre projections are computed together
            and the progress bar advances by a batch.
        bf16 : bool or None
            Compute dtype of the network: bfloat16 (True), float32 (False), or
            None for :func:`fast_bf16` of the device (bfloat16 on GPUs and on
            CPUs with AMX or AVX-512 BF16). The output is float32 either way.
        factorised : bool or None
            Use the factorised first Linear, which holds a [N, 4D] table of
            neighbour projections in the compute dtype for the whole call
            (2 · N · 4D bytes in bfloat16: 1.2 GB for N = 584K, D = 256).
            ``False`` applies the Linear to each tile's tokens instead: no
            [N, 4D] table, about 1.6x the FLOPs. Both also hold a [N, 2D] token
            table in the compute dtype. None (default): factorised unless the
            table would take more than half the device's free memory
            (:func:`sepfl.device.free_memory`; logged).
        progress : bool
            Show a tqdm bar (stderr) over the samples.
        nodes : int [M], optional
            Embed only these samples (distinct indices in ``[0, N)``), e.g. the
            ones whose kNN lists changed: the work and the tables then cover
            only them and their kNN entries, and row i of the output is
            ``e`` of ``nodes[i]``, the same as the full call's row up to float
            rounding.

        Returns
        -------
        e : float32 Tensor [N, 2D], or [M, 2D] with ``nodes``
            On the device of ``features``.

        Raises
        ------
        RuntimeError
            The model is in train mode.
        TypeError, ValueError, IndexError
            Wrong dtypes, shapes (D or k not the model's), non-finite features,
            or neighbour indices outside ``[-1, N)``.
        """
        features = self._check_features(features)
        nbrs = self._check_lists(nbrs, "nbrs", features, features.shape[0])
        if nodes is None:
            return self.embed_graph(features, nbrs, batch_size, bf16, factorised, progress)
        nodes = _check_nodes(nodes, features)
        return self._embed_rows(*_local_rows(features, nbrs[nodes], nodes), nodes.numel(),
                                batch_size, bf16, factorised, progress)

    @torch.no_grad()
    def embed_nodes(self, features: Array, nodes: Array, lists: Array, batch_size: int = 2048,
                    bf16: Optional[bool] = None, factorised: Optional[bool] = None,
                    progress: bool = False) -> torch.Tensor:
        """``e_u`` of ``nodes`` from their own kNN lists, without the other samples' lists.

        :meth:`node_embeddings` with ``nodes``, for a caller that holds only
        the lists of ``nodes`` (a shard of a distributed run,
        :mod:`sepfl.distributed`).

        Parameters
        ----------
        features : float [N, D]
            Every sample's features (the lists index them).
        nodes : int [M]
            Distinct indices in ``[0, N)``.
        lists : int [M, k]
            ``lists[i]`` is the kNN list of ``nodes[i]`` (self at rank 0, -1 missing).
        batch_size, bf16, factorised, progress
            As in :meth:`node_embeddings`.

        Returns
        -------
        e : float32 Tensor [M, 2D]
            Row i is ``e`` of ``nodes[i]``, as :meth:`node_embeddings` gives it
            (up to float rounding: the nodes share tiles differently).
        """
        features = self._check_features(features)
        nodes = _check_nodes(nodes, features)
        lists = self._check_lists(lists, "lists", features, nodes.numel())
        return self._embed_rows(*_local_rows(features, lists, nodes), nodes.numel(), batch_size,
                                bf16, factorised, progress)

    @torch.no_grad()
    def embed_graph(self, features: torch.Tensor, nbrs: torch.Tensor, batch_size: int = 2048,
                    bf16: Optional[bool] = None, factorised: Optional[bool] = None,
                    progress: bool = False) -> torch.Tensor:
        """:meth:`node_embeddings` of every sample from inputs checked by the caller.

        The pipeline's entry (:func:`sepfl.cluster.cluster`), which has checked
        its inputs once at the public boundary: ``features`` a float32 tensor
        [N, D] of finite rows, ``nbrs`` an int64 tensor [N, k] on the same
        device with entries in ``[-1, N)``. They are trusted, not checked again.

        Returns
        -------
        e : float32 Tensor [N, 2D]
            On the device of ``features``.
        """
        return self._embed_rows(features, nbrs, features.shape[0], batch_size, bf16, factorised,
                                progress)

    def _check_features(self, features: Array) -> torch.Tensor:
        """``features`` as a finite float32 tensor [N, D] (TypeError / ValueError otherwise)."""
        features = to_tensor(as_values(features, "features", 2, shape=(None, self.dim)))
        check_finite(features, "features")
        return features

    def _check_lists(self, lists: Array, name: str, features: torch.Tensor,
                     rows: int) -> torch.Tensor:
        """kNN lists as an int64 tensor [rows, k] on the features' device, entries in [-1, N)."""
        lists = to_tensor(as_indices(lists, name, 2, shape=(rows, self.k)), features.device)
        check_index_range(lists, name, features.shape[0], allow_missing=True)
        return lists

    def _embed_rows(self, features: torch.Tensor, nbrs: torch.Tensor, count: int,
                    batch_size: int, bf16: Optional[bool], factorised: Optional[bool],
                    progress: bool) -> torch.Tensor:
        """``e`` [count, 2D] of rows 0..count-1 of ``features`` [U, D] from ``nbrs``
        (int64 [U, k]; only its first ``count`` rows are read), checked inputs."""
        batch_size = check_positive_int(batch_size, "batch_size")
        self._check_inference(features.device)
        dtype = _compute_dtype(features.device, bf16)
        folded = self._folded_weights(dtype)
        # embedded: rows 0..count-1 of the tables (all of them, or the leading ``nodes``)
        n, dim, k = features.shape[0], self.dim, self.k
        batch = max(1, min(batch_size, count))
        tile = batch if features.device.type != "cpu" else min(batch, cpu_tile(dim, k, dtype))
        if factorised is None:
            factorised = _table_fits(n + 2 + batch, 4 * dim, dtype, features.device)
        tables = _Tables(folded, features.to(dtype), batch, factorised)
        # missing neighbours read row n: a zero projection, a zero feature
        rows = torch.where(nbrs < 0, n, nbrs)
        out = torch.empty((count, 2 * dim), dtype=torch.float32, device=features.device)
        out[:, :dim] = features[:count]
        with tqdm(total=count, desc="embeddings", unit="node", unit_scale=True, leave=False,
                  disable=not progress) as bar:
            for start in range(0, count, batch):
                stop = min(start + batch, count)
                tables.set_centres(start, stop)
                weights = torch.empty((stop - start, k), dtype=torch.float32,
                                      device=features.device)
                for lo in range(0, stop - start, tile):
                    hi = min(lo + tile, stop - start)
                    weights[lo:hi] = tables.attention(rows[start + lo:start + hi], lo)
                ids = torch.arange(start, stop, device=features.device)
                out[start:stop, dim:] = ops.aggregate(weights, features, nbrs, ids)
                bar.update(stop - start)
        return out

    @torch.no_grad()
    def score_pairs(self, e: torch.Tensor, src: Array, dst: Array, batch_size: int = 65536,
                    bf16: Optional[bool] = None) -> torch.Tensor:
        """P(same identity) of each pair from per-sample embeddings (eval mode only).

        The classifier runs with its BatchNorms folded into its Linears, and
        ``softmax(logits)[:, 1]`` as the identical ``sigmoid(l_1 - l_0)``.

        Parameters
        ----------
        e : float Tensor [N, 2D]
            From :meth:`node_embeddings`.
        src, dst : int [P]
            Pair endpoints in ``[0, N)``.
        batch_size : int
            Pairs classified at a time.
        bf16 : bool or None
            Compute dtype of the hidden layers, as in :meth:`node_embeddings`
            (the last layer and the output are float32).

        Returns
        -------
        prob : float32 Tensor [P]
            On the device of ``e``.
        """
        e = to_tensor(as_values(e, "e", 2, shape=(None, 2 * self.dim)))
        src = to_tensor(as_indices(src, "src", 1), e.device)
        dst = to_tensor(as_indices(dst, "dst", 1, shape=src.shape), e.device)
        batch_size = check_positive_int(batch_size, "batch_size")
        check_index_range(src, "src", e.shape[0])
        check_index_range(dst, "dst", e.shape[0])
        self._check_inference(e.device)
        folded = self._folded_weights(_compute_dtype(e.device, bf16))
        prob = torch.empty(src.shape[0], dtype=torch.float32, device=e.device)
        for start in range(0, src.shape[0], batch_size):
            a, b = src[start:start + batch_size], dst[start:start + batch_size]
            prob[start:start + a.shape[0]] = folded.pair_probability(e[a], e[b])
        return prob


def _one_calibration_graph(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A head saved with one calibrated grouping (scalar buffers) as one of V = 1 graphs.

    A head calibrated before modules were joined by sure edges (no ``join_above``;
    a ``join`` of the older joining meant something else) joins none.
    """
    stored = dict(state_dict)
    if "edge_head.join_above" not in stored:
        stored.update({"edge_head.join": torch.tensor(0.0),
                       "edge_head.join_above": torch.tensor(JOIN_ABOVE)})
    for name in ("threshold", "markov_time", "join", "join_above", "components"):
        stored[f"edge_head.{name}"] = stored[f"edge_head.{name}"].reshape(1)
    stored["edge_head.same_share"] = torch.zeros(1)
    return stored


# --------------------------------------------------------------------- fast inference path


def _check_nodes(nodes: Array, features: torch.Tensor) -> torch.Tensor:
    """``nodes`` as distinct int64 indices [M] in ``[0, N)`` on the features' device."""
    nodes = to_tensor(as_indices(nodes, "nodes", 1), features.device)
    check_index_range(nodes, "nodes", features.shape[0])
    if torch.unique(nodes).numel() != nodes.numel():
        raise ValueError("nodes must not repeat an index")
    return nodes


def _local_rows(features: torch.Tensor, lists: torch.Tensor,
                nodes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The rows needed to embed ``nodes`` [M] only, given their kNN lists [M, k].

    Returns ``features`` [U, D] of ``nodes`` followed by their other kNN
    entries, and a kNN table [U, k] of those rows whose first M rows are the
    lists of ``nodes`` renumbered (-1 kept) and the others empty (-1), so the
    embedding of ``nodes[i]`` is row i of a full call on them.
    """
    local = torch.full((features.shape[0],), -1, dtype=torch.int64, device=features.device)
    local[nodes] = torch.arange(nodes.numel(), device=features.device)
    entries = torch.unique(lists[lists >= 0])
    others = entries[local[entries] < 0]
    local[others] = torch.arange(nodes.numel(), nodes.numel() + others.numel(),
                                 device=features.device)
    rows = torch.cat([nodes, others])
    table = torch.full((rows.numel(), lists.shape[1]), -1, dtype=torch.int64,
                       device=features.device)
    table[:nodes.numel()] = torch.where(lists < 0, -1, local[lists.clamp_min(0)])
    return features[rows], table

# A CPU tile's [tile, k, 4D] hidden activations are kept to about this size per thread
# (a core's L2 cache).
_CPU_TILE_BYTES = 2 * 2**20
# Where the AMX steps run there are no such activations (the fused channel mix keeps them
# in cache); a tile's [tile, k + 1, 2D] tokens are kept to about this size per thread
# instead: the steps stream them in blocks, and larger tiles spread the per-tile Python
# work over more nodes.
_AMX_TILE_BYTES = 4 * 2**20


def _table_fits(rows: int, width: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a [rows, width] table of ``dtype`` takes at most half of ``device``'s free
    memory (True when that is unknown); logs the choice when it does not fit."""
    size = rows * width * torch.finfo(dtype).bits // 8
    free = free_memory(device)
    if free is None or size <= free // 2:
        return True
    log.info("node embeddings: the [%d, %d] projection table (%.1f GiB) would take more than "
             "half of the %.1f GiB free; applying the first Linear per tile instead (about "
             "1.6x the FLOPs, no table)", rows, width, size / 2**30, free / 2**30)
    return False


def cpu_tile(dim: int, k: int, dtype: torch.dtype) -> int:
    """Nodes per CPU tile of :meth:`PairClassifier.node_embeddings` for D, k and the
    compute dtype: their [tile, k, 4D] hidden activations fill about 2 MiB per torch
    thread (12 nodes per thread for D = 256, k = 80 in bfloat16), or where the AMX steps
    run (bfloat16, :func:`sepfl.ops.amx_ready`) their [tile, k + 1, 2D] tokens about
    4 MiB (50 nodes per thread)."""
    if dtype == torch.bfloat16 and ops.amx_ready():
        per_node, budget = (k + 1) * 2 * dim * dtype.itemsize, _AMX_TILE_BYTES
    else:
        per_node, budget = k * 4 * dim * dtype.itemsize, _CPU_TILE_BYTES
    return max(1, torch.get_num_threads() * budget // per_node)

_gelu_ = torch.ops.aten.gelu_


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 is the faster compute dtype for the network on ``device``.

    True on CUDA devices that support bfloat16, and on CPUs whose flags list
    AMX-BF16 or AVX-512 BF16 while torch runs its AVX-512 kernels and has
    oneDNN (which gives bfloat16 GEMMs their speed); False otherwise,
    e.g. on AVX2-only CPUs, where bfloat16 GEMMs are no faster than float32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_fast_bf16()


def _cpu_has_fast_bf16() -> bool:
    return bool(cpu_bf16_units())


def _compute_dtype(device: torch.device, bf16: Optional[bool]) -> torch.dtype:
    """bfloat16 or float32: ``bf16`` when given, else :func:`fast_bf16` of ``device``."""
    if bf16 is None:
        bf16 = fast_bf16(device)
    return torch.bfloat16 if bf16 else torch.float32


def _bn_affine(bn: nn.BatchNorm1d) -> Tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as ``x * scale + shift``: float64 [C] each."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bn.bias.double() - bn.running_mean.double() * scale


@dataclasses.dataclass(frozen=True)
class _Folded:
    """The eval-mode network of a :class:`PairClassifier` with its BatchNorms folded away.

    Folding is done in float64, then every tensor is cast to ``dtype`` (the
    compute dtype) except the last layers' float32 vectors. Shapes, with
    ``W x`` meaning ``x @ W.T``:

    * ``centre``, ``neighbour`` [4D, D], ``hidden_bias`` [4D]: the first
      channel-mix Linear split over ``[f_u ‖ f_j]``; ``first`` [4D, 2D] whole,
      with ``first_bias`` [4D] for tokens that already hold ``mix_bias``.
    * ``mix`` [2D, 4D], ``mix_bias`` [2D]: the second channel-mix Linear with
      ``channel_bn`` folded in; ``mix_tiles``: ``mix`` packed for
      :func:`sepfl.ops.channel_mix` where that fused step runs (bfloat16 on a CPU with
      AMX), else None.
    * ``token_in`` [2k, k + 1], ``token_out`` [k, 2k + 1]: the token-mix Linears
      with their bias as a last column (the activations carry a row of ones);
      ``token_scale`` [2D]: ``token_bn``'s scale (its shift is folded into
      ``attention_bias``). ``token_tiles``: both Linears padded for
      :func:`sepfl.ops.token_mix_` and ``token_gain`` float32 [2D], the same scale,
      where that fused step runs (bfloat16 on a CPU with AMX), else None.
    * ``attention`` [D, 2D], ``attention_bias`` [D]: the first attention Linear
      with ``attention_bn`` and the ``token_bn`` shift folded in;
      ``attention_out`` [D] and float ``attention_out_bias``: the last one;
      ``attention_tiles``: ``attention`` packed for :func:`sepfl.ops.attention_scores`
      with float32 ``attention_bias`` and ``attention_out``, where that fused step runs
      (bfloat16 on a CPU with AMX), else None.
    * ``pair_in`` [2D, 4D], ``pair_mid`` [D, 2D] and biases: the classifier's
      Linears with all three of its BatchNorms folded in; float32 ``pair_out`` [D]
      and float ``pair_out_bias``: the difference of its two logit rows.
    """

    key: tuple
    centre: torch.Tensor
    neighbour: torch.Tensor
    hidden_bias: torch.Tensor
    first: torch.Tensor
    first_bias: torch.Tensor
    mix: torch.Tensor
    mix_bias: torch.Tensor
    mix_tiles: Optional[torch.Tensor]
    token_in: torch.Tensor
    token_out: torch.Tensor
    token_scale: torch.Tensor
    token_tiles: Optional[Tuple[torch.Tensor, torch.Tensor]]
    token_gain: Optional[torch.Tensor]
    attention: torch.Tensor
    attention_bias: torch.Tensor
    attention_out: torch.Tensor
    attention_out_bias: float
    attention_tiles: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    pair_in: torch.Tensor
    pair_in_bias: torch.Tensor
    pair_mid: torch.Tensor
    pair_mid_bias: torch.Tensor
    pair_out: torch.Tensor
    pair_out_bias: float

    @classmethod
    @torch.no_grad()
    def of(cls, model: PairClassifier, dtype: torch.dtype, key: tuple) -> "_Folded":
        def w(linear: nn.Linear) -> Tuple[torch.Tensor, torch.Tensor]:
            return linear.weight.double(), linear.bias.double()

        dim = model.dim
        first, first_bias = w(model.channel_mix[0])
        channel_scale, channel_shift = _bn_affine(model.channel_bn)
        mix, mix_bias = w(model.channel_mix[3])
        mix, mix_bias = channel_scale[:, None] * mix, channel_scale * mix_bias + channel_shift
        token_in = torch.cat([w(model.token_mix[0])[0], w(model.token_mix[0])[1][:, None]], 1)
        token_out = torch.cat([w(model.token_mix[3])[0], w(model.token_mix[3])[1][:, None]], 1)
        token_scale, token_shift = _bn_affine(model.token_bn)
        attention_scale, attention_shift = _bn_affine(model.attention_bn)
        attention, attention_bias = w(model.attention_layer[0])
        attention_bias = attention_bias + attention @ (attention_scale * token_shift
                                                       + attention_shift)
        attention = attention * attention_scale
        attention_out, attention_out_bias = w(model.attention_layer[3])
        scale_0, shift_0 = _bn_affine(model.classifier[0])
        scale_2, shift_2 = _bn_affine(model.classifier[2])
        scale_6, shift_6 = _bn_affine(model.classifier[6])
        pair_in, pair_in_bias = w(model.classifier[1])
        pair_in_bias = scale_2 * (pair_in @ shift_0 + pair_in_bias) + shift_2
        pair_in = scale_2[:, None] * pair_in * scale_0
        pair_mid, pair_mid_bias = w(model.classifier[5])
        pair_mid, pair_mid_bias = scale_6[:, None] * pair_mid, scale_6 * pair_mid_bias + shift_6
        pair_out, pair_out_bias = w(model.classifier[9])

        def c(x: torch.Tensor) -> torch.Tensor:
            return x.to(dtype).contiguous()

        # the fused AMX steps (token mix, channel mix, attention scores) run
        amx = dtype == torch.bfloat16 and first.device.type == "cpu" and ops.amx_ready()

        return cls(key=key, centre=c(first[:, :dim]), neighbour=c(first[:, dim:]),
                   hidden_bias=c(first_bias), first=c(first),
                   first_bias=c(first_bias - first @ mix_bias), mix=c(mix),
                   mix_bias=c(mix_bias),
                   mix_tiles=ops.channel_mix_weights(mix) if amx else None,
                   token_in=c(token_in), token_out=c(token_out),
                   token_scale=c(token_scale),
                   token_tiles=ops.token_mix_weights(token_in, token_out) if amx else None,
                   token_gain=token_scale.float() if amx else None, attention=c(attention),
                   attention_bias=c(attention_bias), attention_out=c(attention_out[0]),
                   attention_out_bias=float(attention_out_bias[0]),
                   attention_tiles=(ops.channel_mix_weights(attention), attention_bias.float(),
                                    attention_out[0].float()) if amx else None,
                   pair_in=c(pair_in),
                   pair_in_bias=c(pair_in_bias), pair_mid=c(pair_mid),
                   pair_mid_bias=c(pair_mid_bias),
                   pair_out=(pair_out[1] - pair_out[0]).float(),
                   pair_out_bias=float(pair_out_bias[1] - pair_out_bias[0]))

    def pair_probability(self, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
        """float32 [P] P(same identity) from float [P, 2D] embeddings of both sides."""
        x = torch.cat([e_a, e_b], dim=1).to(self.pair_in.dtype)
        h = _gelu_(torch.addmm(self.pair_in_bias, x, self.pair_in.t()))
        h = _gelu_(torch.addmm(self.pair_mid_bias, h, self.pair_mid.t()))
        return torch.sigmoid(torch.mv(h.float(), self.pair_out) + self.pair_out_bias)


class _Tables:
    """Per-call gather tables of :meth:`PairClassifier.node_embeddings`, and its tile step.

    Every token of a tile is one ``embedding_bag`` sum of two table rows, its
    neighbour's and its centre's, for both tables at once:

    * ``hidden`` [N + 2 + batch, 4D] (factorised path only): rows ``0..N-1`` the
      neighbour projections ``W_n f``, row N zeros (a missing neighbour), row
      N + 1 zeros, then the current batch's centre projections ``W_c f_u + b``.
    * ``tokens`` [N + 2 + batch, 2D]: rows ``0..N-1`` ``[0 ‖ f + mix_bias_hi]``,
      row N ``[0 ‖ mix_bias_hi]``, row N + 1 all 0.5 (a bag of it twice is the
      token mix's row of ones), then ``[f_u + mix_bias_lo ‖ 0]`` of the batch.

    So a tile's tokens arrive as ``[f_u ‖ f_j] + mix_bias``, ready to receive
    the second channel-mix GEMM as a residual. In bfloat16 on a CPU with AMX,
    :func:`sepfl.ops.channel_mix` reads the same row pairs of both tables itself and
    writes the tokens with that residual (the hidden activations never leave the
    core's cache); with AVX-512 BF16 only, the hidden sums come with their GELU from
    :func:`sepfl.ops.gather_gelu`.
    """

    def __init__(self, folded: _Folded, features: torch.Tensor, batch: int, factorised: bool):
        n, dim = features.shape
        self.folded, self.features, self.n, self.dim = folded, features, n, dim
        self.hidden: Optional[torch.Tensor] = None
        # the hidden table's two rows per token summed with their GELU in one native pass
        self.gather_gelu = (features.dtype == torch.bfloat16 and features.device.type == "cpu"
                            and ops.gather_gelu_ready())
        # the tokens, the hidden table's GELU and the channel mix in one native pass
        self.channel_mix = factorised and folded.mix_tiles is not None
        if factorised:
            self.hidden = features.new_empty((n + 2 + batch, 4 * dim))
            torch.mm(features, folded.neighbour.t(), out=self.hidden[:n])
            self.hidden[n:n + 2] = 0
        self.tokens = features.new_zeros((n + 2 + batch, 2 * dim))
        torch.add(features, folded.mix_bias[dim:], out=self.tokens[:n, dim:])
        self.tokens[n, dim:] = folded.mix_bias[dim:]
        self.tokens[n + 1] = 0.5
        self.slots = torch.arange(n + 2, n + 2 + batch, device=features.device)
        self._scratch: Dict[int, Tuple[torch.Tensor, Optional[torch.Tensor],
                                       Optional[torch.Tensor]]] = {}

    def _scratch_for(self, b: int, k: int) -> Tuple[torch.Tensor, Optional[torch.Tensor],
                                                    Optional[torch.Tensor]]:
        """Reused per-tile buffers for B = ``b``, each with its constant last rows already
        written: bags int64 [(k + 1) B, 2]; unless the fused token mix runs, the token-mix
        activations [2k + 1, B · 2D]; where the fused channel mix runs, the tokens
        [(k + 1) B, 2D] it writes (the last B rows the token mix's ones)."""
        if b not in self._scratch:
            bags = torch.full(((k + 1) * b, 2), self.n + 1, dtype=torch.int64,
                              device=self.features.device)
            mixed = tokens = None
            if self.folded.token_tiles is None:
                mixed = self.features.new_empty((2 * k + 1, b * 2 * self.dim))
                mixed[2 * k] = 1
            if self.channel_mix:
                tokens = self.features.new_empty(((k + 1) * b, 2 * self.dim))
                tokens[k * b:] = 1
            self._scratch[b] = bags, mixed, tokens
        return self._scratch[b]

    def set_centres(self, start: int, stop: int) -> None:
        """Write the centre rows of samples ``start..stop-1`` into the slots."""
        slots = slice(self.n + 2, self.n + 2 + stop - start)
        centres = self.features[start:stop]
        if self.hidden is not None:
            torch.addmm(self.folded.hidden_bias, centres, self.folded.centre.t(),
                        out=self.hidden[slots])
        torch.add(centres, self.folded.mix_bias[:self.dim], out=self.tokens[slots, :self.dim])

    def attention(self, rows: torch.Tensor, first_slot: int) -> torch.Tensor:
        """Neighbour weights of one tile: float32 [B, k].

        ``rows`` int64 [B, k] are the tile's kNN rows (missing as N); its
        centres sit in slots ``first_slot .. first_slot + B - 1``.
        """
        folded = self.folded
        b, k = rows.shape
        width = 2 * self.dim
        bags, mixed, tokens = self._scratch_for(b, k)
        token_bags = bags[:k * b].view(k, b, 2)
        token_bags[:, :, 0] = rows.t()
        token_bags[:, :, 1] = self.slots[first_slot:first_slot + b]
        if tokens is not None:
            x = ops.channel_mix(self.tokens, self.hidden, bags[:k * b], folded.mix_tiles,
                                tokens[:k * b])
        else:
            tokens = nn.functional.embedding_bag(bags, self.tokens, mode="sum")
            x = tokens[:k * b]
            if self.hidden is None:
                hidden = _gelu_(torch.addmm(folded.first_bias, x, folded.first.t()))
            elif self.gather_gelu:
                hidden = ops.gather_gelu(self.hidden, bags[:k * b])
            else:
                hidden = _gelu_(nn.functional.embedding_bag(bags[:k * b], self.hidden,
                                                            mode="sum"))
            x.addmm_(hidden, folded.mix.t())
        if folded.token_tiles is not None:
            ops.token_mix_(tokens.view(k + 1, b * width), *folded.token_tiles,
                           folded.token_gain)
        else:
            _gelu_(torch.mm(folded.token_in, tokens.view(k + 1, b * width),
                            out=mixed[:2 * k]))
            token_mix = torch.mm(folded.token_out, mixed)
            x.view(k, b, width).addcmul_(token_mix.view(k, b, width), folded.token_scale)
        if folded.attention_tiles is not None:
            weights = ops.attention_scores(x, *folded.attention_tiles).view(k, b).t()
        else:
            hidden = _gelu_(torch.addmm(folded.attention_bias, x, folded.attention.t()))
            weights = torch.mv(hidden, folded.attention_out).view(k, b).t().float()
        return weights + folded.attention_out_bias
