"""Contrastive losses with features gathered with gradient across data-parallel ranks.

Every loss here follows one convention (open_clip's `local_loss`): rank r scores its own B local
rows against the B*W gathered columns, and the mean over ranks of the per-rank losses equals the
loss of one process on the whole global batch. The all-gather's backward sums the gradient from
every rank's loss (all-reduce, then this rank's slice), so each rank's feature gradient is that of
the *sum* over ranks; DDP's gradient *averaging* then turns parameter gradients into exactly the
single-process gradients of the global loss. Replicated parameters (logit scale, bias) get their
gradient from the local loss only and DDP averages them the same way.

Pass `group=None` (or a 1-rank group) for a single-process loss. Every rank in `group` must hold
the same local batch size (use drop_last); a mismatch raises instead of hanging.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _group_rank_world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all-gather along dim 0. Backward: sum the incoming gradients of all ranks and keep
    this rank's slice (reduce-scatter on NCCL; all-reduce + slice on gloo, which has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        rank, world = _group_rank_world(group)
        ctx.group, ctx.rank, ctx.n = group, rank, x.shape[0]
        x = x.contiguous()
        if dist.get_backend(group) == "nccl":
            out = x.new_empty((world * x.shape[0], *x.shape[1:]))
            dist.all_gather_into_tensor(out, x, group=group)
            return out
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == "nccl":
            out = grad.new_empty((ctx.n, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM, group=ctx.group)
            return out, None
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None


def gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """All-gather `x` [B, ...] over `group` into [W*B, ...] (rank order), differentiable: the
    backward sums every rank's gradient for this rank's rows. Identity without a group."""
    if _group_rank_world(group)[1] == 1:
        return x
    return _AllGatherWithGrad.apply(x, group)


def check_equal_local_batch(n: int, group: dist.ProcessGroup | None, device: torch.device, what: str = "local batch") -> None:
    """Raise if the ranks of `group` do not all hold `n` rows (gathers would otherwise hang)."""
    _, world = _group_rank_world(group)
    if world == 1:
        return
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device), group=group)
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) != 1:
        raise ValueError(
            f"contrastive loss needs the same {what} on every rank, got {sizes}: make the global batch "
            "divisible by the number of ranks and drop the last incomplete batch (drop_last=True)."
        )


def _local_labels(n: int, rank: int, device: torch.device) -> torch.Tensor:
    # this rank's rows sit at [rank*n, (rank+1)*n) of the gathered columns
    return torch.arange(n, device=device) + rank * n


class ClipInfoNCELoss(nn.Module):
    """Symmetric CLIP InfoNCE with a learnable temperature, as a local loss over gathered features.

    Holds the `logit_scale` parameter (log of the inverse temperature), initialised to ln(1/0.07)
    and clamped at ln(100) in the forward (above the clamp it receives no gradient).
    """

    def __init__(self, init_logit_scale: float = math.log(1 / 0.07), max_logit_scale: float = math.log(100),
                 learnable: bool = True, normalize: bool = True) -> None:
        """`normalize`: L2-normalise the incoming features (set False if they already are)."""
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)), requires_grad=learnable)
        self.max_logit_scale = max_logit_scale
        self.normalize = normalize

    def scale(self) -> torch.Tensor:
        """exp(clamped logit_scale), the multiplier of the cosine similarities."""
        return self.logit_scale.clamp(max=self.max_logit_scale).exp()

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                group: dist.ProcessGroup | None = None) -> torch.Tensor:
        """Loss of this rank's [B, D] image/text pairs against all ranks' pairs in `group`."""
        if self.normalize:
            image_features, text_features = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
        rank, _ = _group_rank_world(group)
        check_equal_local_batch(image_features.shape[0], group, image_features.device)
        all_images = gather_with_grad(image_features, group)
        all_texts = gather_with_grad(text_features, group)
        scale = self.scale()
        logits_per_image = scale * image_features @ all_texts.T  # [B, W*B]
        logits_per_text = scale * text_features @ all_images.T
        labels = _local_labels(image_features.shape[0], rank, image_features.device)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


class SigLIPLoss(nn.Module):
    """Sigmoid pairwise loss (SigLIP) with a learnable scale (init ln 10) and bias (init -10).

    Global form: -(1/N) * sum_{i,j} log sigmoid(z_ij * (t * <x_i, y_j> + b)), z = +1 on matching
    pairs and -1 elsewhere, N the global batch. Rank r sums the pairs of its own images with all
    gathered texts, divided by its local batch, so the mean over ranks is the global loss.
    """

    def __init__(self, init_logit_scale: float = math.log(10), init_bias: float = -10.0,
                 max_logit_scale: float = math.log(100), normalize: bool = True) -> None:
        """`normalize`: L2-normalise the incoming features (set False if they already are)."""
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias)))
        self.max_logit_scale = max_logit_scale
        self.normalize = normalize

    def scale(self) -> torch.Tensor:
        """exp(clamped logit_scale)."""
        return self.logit_scale.clamp(max=self.max_logit_scale).exp()

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                group: dist.ProcessGroup | None = None) -> torch.Tensor:
        """Loss of this rank's [B, D] images against all ranks' texts in `group`."""
        if self.normalize:
            image_features, text_features = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
        rank, _ = _group_rank_world(group)
        n = image_features.shape[0]
        check_equal_local_batch(n, group, image_features.device)
        all_texts = gather_with_grad(text_features, group)
        logits = self.scale() * image_features @ all_texts.T + self.logit_bias  # [B, W*B]
        signs = -torch.ones_like(logits)
        signs[torch.arange(n, device=logits.device), _local_labels(n, rank, logits.device)] = 1.0
        return -F.logsigmoid(signs * logits).sum() / n


class CaptionInfoNCELoss(nn.Module):
    """Stage-1 caption-contrastive InfoNCE (query -> document) with a fixed scale.

    Documents are every rank's positives followed by every rank's hard negatives; each query's
    label is its own positive. Cosine similarity times `scale` (50 = temperature 0.02, the
    LLM2CLIP value). Not learnable: the module has no parameters.
    """

    def __init__(self, scale: float = 50.0) -> None:
        """`scale`: multiplier of the cosine similarities (inverse temperature)."""
        super().__init__()
        self.scale = scale

    def forward(self, query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None = None,
                group: dist.ProcessGroup | None = None) -> torch.Tensor:
        """query, positive [B, D]; negatives [B, H, D] or [B*H, D] hard negatives (or None)."""
        if positive.shape != query.shape:
            raise ValueError(f"positive {list(positive.shape)} must have the query's shape {list(query.shape)}.")
        rank, _ = _group_rank_world(group)
        n, d = query.shape
        check_equal_local_batch(n, group, query.device, what="local batch of queries")
        q = F.normalize(query, dim=-1)
        docs = [gather_with_grad(F.normalize(positive, dim=-1), group)]
        if negatives is not None and negatives.numel():
            negatives = negatives.reshape(-1, d)
            if negatives.shape[0] % n:
                raise ValueError(f"{negatives.shape[0]} hard negatives for {n} queries: give the same number "
                                 "of hard negatives to every query.")
            docs.append(gather_with_grad(F.normalize(negatives, dim=-1), group))
        logits = self.scale * q @ torch.cat(docs, dim=0).T
        return F.cross_entropy(logits, _local_labels(n, rank, query.device))


def _multi_inputs(image_features: torch.Tensor, text_features: torch.Tensor, mask: torch.Tensor | None,
                  group: dist.ProcessGroup | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check [B, D] images against [B, K, D] texts and a [B, K] bool mask; return the mask (all True
    when None) and the number of valid texts over every rank of `group` (a float tensor, no grad)."""
    if text_features.dim() != 3 or text_features.shape[0] != image_features.shape[0] \
            or text_features.shape[2] != image_features.shape[1]:
        raise ValueError(f"text features {list(text_features.shape)} must be [B, K, D] for images "
                         f"{list(image_features.shape)} [B, D].")
    if mask is None:
        mask = torch.ones(text_features.shape[:2], dtype=torch.bool, device=text_features.device)
    if mask.shape != text_features.shape[:2]:
        raise ValueError(f"caption mask {list(mask.shape)} must be [B, K] = {list(text_features.shape[:2])}.")
    mask = mask.to(device=text_features.device, dtype=torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every image needs at least one valid caption (a row of the caption mask is all False).")
    count = mask.sum().to(image_features.dtype).detach()
    if _group_rank_world(group)[1] > 1:
        count = count.clone()
        dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
    return mask, count


def _positive_columns(n: int, k: int, rank: int, device: torch.device) -> torch.Tensor:
    """[B, K] column indices of local image i's K texts among the W*B*K gathered texts (row-major)."""
    return (_local_labels(n, rank, device)[:, None] * k + torch.arange(k, device=device)[None, :])


class MultiPositiveInfoNCELoss(ClipInfoNCELoss):
    """Symmetric InfoNCE with K captions (positives) per image, as a local loss over gathered features.

    Formula, on the global batch of N images x_i with texts y_ik (valid where m_ik), s = t * cosine:
      image -> text (supervised-contrastive "L_out" form, Khosla et al. 2020, eq. 2; the multi-caption
      objective of FLAME, Cao et al. 2024):
        L_i2t = -(1/N) sum_i (1/|P_i|) sum_{k in P_i} log( exp(s(x_i, y_ik)) / sum_{j,l valid} exp(s(x_i, y_jl)) )
      text -> image (each text has exactly one positive image):
        L_t2i = -(1/M) sum_{i,k valid} log( exp(s(y_ik, x_i)) / sum_j exp(s(y_ik, x_j)) ),  M = valid texts
      loss = (L_i2t + L_t2i) / 2.  With K = 1 it equals `ClipInfoNCELoss`.
    Rank r computes its B images / its valid texts against every rank's texts / images; L_t2i's local
    sum is divided by M/W (M all-reduced), so the mean over ranks is the global loss.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, mask: torch.Tensor | None = None,
                group: dist.ProcessGroup | None = None) -> torch.Tensor:
        """image_features [B, D], text_features [B, K, D], mask [B, K] bool (True = caption present;
        None = all present). Raises ValueError on shape mismatch, on an image without a valid caption,
        or when ranks hold different B."""
        if self.normalize:
            image_features, text_features = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
        rank, world = _group_rank_world(group)
        n, k, d = text_features.shape if text_features.dim() == 3 else (image_features.shape[0], 0, 0)
        mask, count = _multi_inputs(image_features, text_features, mask, group)
        check_equal_local_batch(n, group, image_features.device)
        all_images = gather_with_grad(image_features, group)  # [W*B, D]
        all_texts = gather_with_grad(text_features, group).reshape(-1, d)  # [W*B*K, D]
        all_mask = gather_with_grad(mask.to(image_features.dtype), group).reshape(-1) > 0.5
        scale = self.scale()
        logits = (scale * image_features @ all_texts.T).masked_fill(~all_mask, float("-inf"))  # [B, W*B*K]
        log_prob = logits.log_softmax(dim=1).gather(1, _positive_columns(n, k, rank, logits.device))  # [B, K]
        per_image = log_prob.masked_fill(~mask, 0.0).sum(1) / mask.sum(1)
        i2t = -per_image.mean()
        logits_t = scale * text_features.reshape(n * k, d) @ all_images.T  # [B*K, W*B]
        labels = _local_labels(n, rank, logits.device).repeat_interleave(k)
        per_text = F.cross_entropy(logits_t, labels, reduction="none")
        t2i = (per_text * mask.reshape(-1)).sum() / (count / world)
        return (i2t + t2i) / 2


class MultiPositiveSigLIPLoss(SigLIPLoss):
    """Sigmoid pairwise loss (SigLIP, Zhai et al. 2023, eq. 1) with K captions per image.

    Global form: -(1/N) sum_i sum_{j,l valid} log sigmoid(z_ijl * (t * <x_i, y_jl> + b)), with
    z_ijl = +1 when j = i (every valid caption of image i is a positive) and -1 otherwise, N the
    global number of images. Every pair is an independent binary term, so the positives need no
    reweighting; with K = 1 it equals `SigLIPLoss`. Rank r sums its own images' pairs with every
    rank's valid texts, divided by its local B, so the mean over ranks is the global loss.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, mask: torch.Tensor | None = None,
                group: dist.ProcessGroup | None = None) -> torch.Tensor:
        """image_features [B, D], text_features [B, K, D], mask [B, K] bool (None = all present).
        Raises ValueError like `MultiPositiveInfoNCELoss.forward`."""
        if self.normalize:
            image_features, text_features = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
        rank, _ = _group_rank_world(group)
        n, k, d = text_features.shape if text_features.dim() == 3 else (image_features.shape[0], 0, 0)
        mask, _ = _multi_inputs(image_features, text_features, mask, group)
        check_equal_local_batch(n, group, image_features.device)
        all_texts = gather_with_grad(text_features, group).reshape(-1, d)  # [W*B*K, D]
        all_mask = gather_with_grad(mask.to(image_features.dtype), group).reshape(-1)  # 1 = valid
        logits = self.scale() * image_features @ all_texts.T + self.logit_bias  # [B, W*B*K]
        signs = -torch.ones_like(logits)
        signs.scatter_(1, _positive_columns(n, k, rank, logits.device), 1.0)
        return -(F.logsigmoid(signs * logits) * all_mask).sum() / n
