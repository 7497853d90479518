"""Contrastive losses: single-process values vs explicit formulas, and DP=2 (gloo) vs DP=1 on the
same global batch: equal loss and equal DDP-averaged gradients for InfoNCE, SigLIP, CaptionInfoNCE and
the multi-positive (K captions per image) InfoNCE and SigLIP."""
import math

import pytest
import torch
import torch.nn.functional as F
from dist_utils import run_workers

from llm2clip_nemo.losses import (
    CaptionInfoNCELoss,
    ClipInfoNCELoss,
    MultiPositiveInfoNCELoss,
    MultiPositiveSigLIPLoss,
    SigLIPLoss,
)

GLOBAL, DIN, DOUT, NEG, K = 6, 5, 4, 2, 3  # global batch, tower in/out dims, hard negatives per query, captions
# caption mask of the multi-positive losses: rank 0 (rows 0-2) misses two captions, rank 1 none, so the
# text->image mean must use the global count of valid texts
MASK = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    return {
        "x_img": torch.randn(GLOBAL, DIN, generator=g, dtype=dtype),
        "x_txt": torch.randn(GLOBAL, DIN, generator=g, dtype=dtype),
        "x_neg": torch.randn(GLOBAL, NEG, DIN, generator=g, dtype=dtype),
        "w_img": torch.randn(DIN, DOUT, generator=g, dtype=dtype),
        "w_txt": torch.randn(DIN, DOUT, generator=g, dtype=dtype),
        "x_multi": torch.randn(GLOBAL, K, DIN, generator=g, dtype=dtype),
    }


def _step(kind, dtype, rows, group):
    """One loss + backward on `rows` of the global batch; features come from replicated linear
    'towers' so parameter gradients can be compared the way DDP sees them."""
    t = _inputs(dtype)
    w_img, w_txt = (t[k].clone().requires_grad_() for k in ("w_img", "w_txt"))
    img = t["x_img"][rows] @ w_img
    txt = (t["x_multi"] if kind.startswith("mp_") else t["x_txt"])[rows] @ w_txt
    img.retain_grad()
    txt.retain_grad()
    if kind == "infonce":
        loss_fn = ClipInfoNCELoss().to(dtype)
        loss = loss_fn(img, txt, group=group)
    elif kind == "siglip":
        loss_fn = SigLIPLoss().to(dtype)
        loss = loss_fn(img, txt, group=group)
    elif kind.startswith("mp_"):
        loss_fn = (MultiPositiveInfoNCELoss() if kind == "mp_infonce" else MultiPositiveSigLIPLoss()).to(dtype)
        loss = loss_fn(img, txt, MASK[rows], group=group)
    else:
        loss_fn = CaptionInfoNCELoss()
        loss = loss_fn(img, txt, t["x_neg"][rows] @ w_txt, group=group)
    loss.backward()
    grads = {"w_img": w_img.grad, "w_txt": w_txt.grad, **{n: p.grad for n, p in loss_fn.named_parameters()}}
    return loss.detach(), grads, img.grad, txt.grad


KINDS = ("infonce", "siglip", "caption", "mp_infonce", "mp_siglip")


def _dp_worker(rank, world_size):
    import torch.distributed as dist

    from llm2clip_nemo.runtime import init_distributed

    init_distributed(backend="gloo")  # the losses need torch.distributed only, not megatron's state
    group = dist.group.WORLD
    local = GLOBAL // world_size
    rows = slice(rank * local, (rank + 1) * local)
    out = {}
    for kind in KINDS:
        for dtype in (torch.float64, torch.float32):
            loss, grads, g_img, g_txt = _step(kind, dtype, rows, group)
            dist.all_reduce(loss)
            for g in grads.values():  # what DDP does: average gradients over ranks
                dist.all_reduce(g)
                g /= world_size
            out[kind, dtype] = (loss / world_size, grads, g_img, g_txt)
    # a rank with a different local batch: a clear error instead of a hang
    n = 3 if rank == 0 else 2
    try:
        ClipInfoNCELoss()(torch.randn(n, 4), torch.randn(n, 4), group=group)
        out["mismatch"] = None
    except ValueError as e:
        out["mismatch"] = str(e)
    return out


@pytest.fixture(scope="module")
def dp2():
    return run_workers(_dp_worker, 2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dp2_equals_dp1(dp2, kind, dtype):
    # fp32: a loss of ~15 has an ulp of ~1e-6, so allow 1e-6 absolute plus 1e-6 relative
    tol, rtol = (1e-12, 0.0) if dtype == torch.float64 else (1e-6, 1e-6)
    loss1, grads1, g_img1, g_txt1 = _step(kind, dtype, slice(0, GLOBAL), None)
    for rank, result in enumerate(dp2):
        loss2, grads2, g_img2, g_txt2 = result[kind, dtype]
        torch.testing.assert_close(loss2, loss1, atol=tol, rtol=rtol)
        assert grads2.keys() == grads1.keys()
        for name in grads1:
            torch.testing.assert_close(grads2[name], grads1[name], atol=tol, rtol=rtol, msg=name)
        # feature gradients are those of the sum over ranks, i.e. world_size x the global loss's
        rows = slice(rank * 3, rank * 3 + 3)
        torch.testing.assert_close(g_img2 / 2, g_img1[rows], atol=tol, rtol=rtol)
        torch.testing.assert_close(g_txt2 / 2, g_txt1[rows], atol=tol, rtol=rtol)


def test_unequal_local_batches_are_refused(dp2):
    for result in dp2:
        assert "same local batch on every rank, got [3, 2]" in result["mismatch"]


def _features(n=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


def test_infonce_matches_formula():
    img, txt = _features()
    loss_fn = ClipInfoNCELoss().double()
    loss_fn.logit_scale.data.fill_(math.log(1 / 0.07))  # exactly, not via a float32 round trip
    loss = loss_fn(img, txt)
    a, b = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    sim = (a @ b.T) / 0.07
    # explicit log-softmax of the diagonal, rows (image->text) and columns (text->image)
    ref = -(torch.diag(sim) - torch.logsumexp(sim, 1)).mean() / 2 - (torch.diag(sim) - torch.logsumexp(sim, 0)).mean() / 2
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=0)


def test_logit_scale_is_clamped_at_100():
    img, txt = _features()
    loss_fn = ClipInfoNCELoss(init_logit_scale=math.log(1000)).double()
    assert float(loss_fn.scale().detach()) == pytest.approx(100.0)
    loss_fn(img, txt).backward()
    assert float(loss_fn.logit_scale.grad) == 0.0
    assert float(ClipInfoNCELoss().logit_scale) == pytest.approx(math.log(1 / 0.07))


def test_siglip_matches_pairwise_sum():
    img, txt = _features()
    loss_fn = SigLIPLoss().double()
    assert float(loss_fn.scale().detach()) == pytest.approx(10.0) and float(loss_fn.logit_bias) == -10.0
    loss_fn.logit_scale.data.fill_(math.log(10.0))
    a, b = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    total = 0.0
    for i in range(5):
        for j in range(5):
            z = 1.0 if i == j else -1.0
            total -= math.log(1 / (1 + math.exp(-z * (10.0 * float(a[i] @ b[j]) - 10.0))))
    assert float(loss_fn(img, txt)) == pytest.approx(total / 5, abs=1e-10)


def test_caption_infonce_matches_formula():
    q, p = _features(4, 6)
    neg = torch.randn(4, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    loss = CaptionInfoNCELoss()(q, p, neg)
    docs = F.normalize(torch.cat([p, neg.reshape(8, 6)]), dim=-1)
    sim = 50.0 * F.normalize(q, dim=-1) @ docs.T  # [4, 12]
    ref = -(sim[range(4), range(4)] - torch.logsumexp(sim, 1)).mean()
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=0)
    # without hard negatives it is plain in-batch InfoNCE in the query->document direction
    sim = 50.0 * F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T
    torch.testing.assert_close(CaptionInfoNCELoss()(q, p), F.cross_entropy(sim, torch.arange(4)), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="5 hard negatives for 4 queries"):
        CaptionInfoNCELoss()(q, p, torch.randn(5, 6, dtype=torch.float64))


def _multi(n=4, k=3, d=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, k, d, generator=g, dtype=torch.float64)


HAND_MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)


def test_multi_positive_infonce_matches_formula():
    img, txt = _multi()
    loss_fn = MultiPositiveInfoNCELoss().double()
    loss_fn.logit_scale.data.fill_(math.log(1 / 0.07))
    a, b = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    valid = [(j, c) for j in range(4) for c in range(3) if HAND_MASK[j, c]]  # the 9 present captions
    s = {(i, j, c): float(a[i] @ b[j, c]) / 0.07 for i in range(4) for j in range(4) for c in range(3)}
    i2t = 0.0
    for i in range(4):
        denom = sum(math.exp(s[i, j, c]) for j, c in valid)
        pos = [c for c in range(3) if HAND_MASK[i, c]]
        i2t -= sum(math.log(math.exp(s[i, i, c]) / denom) for c in pos) / len(pos) / 4
    t2i = 0.0
    for j, c in valid:
        t2i -= math.log(math.exp(s[j, j, c]) / sum(math.exp(s[i, j, c]) for i in range(4))) / len(valid)
    assert float(loss_fn(img, txt, HAND_MASK)) == pytest.approx((i2t + t2i) / 2, abs=1e-10)
    # one caption per image: exactly the plain CLIP InfoNCE
    single = ClipInfoNCELoss().double()
    single.logit_scale.data.fill_(math.log(1 / 0.07))
    torch.testing.assert_close(loss_fn(img, txt[:, :1]), single(img, txt[:, 0]), atol=1e-12, rtol=0)


def test_multi_positive_siglip_matches_formula():
    img, txt = _multi()
    loss_fn = MultiPositiveSigLIPLoss().double()
    loss_fn.logit_scale.data.fill_(math.log(10.0))
    a, b = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    total = 0.0
    for i in range(4):
        for j in range(4):
            for c in range(3):
                if HAND_MASK[j, c]:
                    z = 1.0 if i == j else -1.0
                    total -= math.log(1 / (1 + math.exp(-z * (10.0 * float(a[i] @ b[j, c]) - 10.0))))
    assert float(loss_fn(img, txt, HAND_MASK)) == pytest.approx(total / 4, abs=1e-10)
    single = SigLIPLoss().double()
    single.logit_scale.data.fill_(math.log(10.0))
    torch.testing.assert_close(loss_fn(img, txt[:, :1]), single(img, txt[:, 0]), atol=1e-12, rtol=0)


def test_multi_positive_bad_inputs_are_refused():
    img, txt = _multi()
    for loss_fn in (MultiPositiveInfoNCELoss(), MultiPositiveSigLIPLoss()):
        with pytest.raises(ValueError, match=r"text features \[4, 5\] must be \[B, K, D\] for images \[4, 5\]"):
            loss_fn.double()(img, txt[:, 0])
        with pytest.raises(ValueError, match=r"caption mask \[4, 2\] must be \[B, K\] = \[4, 3\]"):
            loss_fn(img, txt, HAND_MASK[:, :2])
        no_caption = HAND_MASK.clone()
        no_caption[1] = False
        with pytest.raises(ValueError, match="every image needs at least one valid caption"):
            loss_fn(img, txt, no_caption)
