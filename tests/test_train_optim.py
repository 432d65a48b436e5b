"""The torch backend's fast step is llm.c's step: golden numbers from llm.c's own train_gpt2.c, and the
chunked lm head, the fused AdamW and the fp32 grad norm each against the plain computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.llmc.shapes import DECAYED, parse_descriptor
from pipelines.model import GPT2, head_loss
from pipelines.train.data import MT19937
from pipelines.train.optim import AdamW, grad_norm
from pipelines.train.reference import train_step

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# llm.c's train_gpt2.c (CPU, fp32; karpathy/llm.c f1e2ace), built outside this repository with a small
# driver: the d2c64 model of GPT2(seed=42) written as a v3 checkpoint, one batch B=4, T=64 of the tokens
# below, 10 steps of gpt2_forward / gpt2_backward, the grad norm, grads * 1/norm when norm > 1
# (train_gpt2.cu's clipping), gpt2_update(lr 3e-3, beta1 0.9, beta2 0.95, eps 1e-8, weight decay 0.1 on
# every tensor, as train_gpt2.c decays them all). Loss and norm before each update:
LLMC_LOSSES = [10.8604755, 10.423996, 10.1641512, 9.94143105, 9.69361305, 9.44199848, 9.19924641, 8.93139553,
               8.65499115, 8.38089275]
LLMC_NORMS = [1.17675042, 1.98697329, 2.62558079, 1.86019278, 1.45034611, 1.06923938, 1.29006386, 1.10108078,
              0.991049767, 1.14365053]


def golden_batch(B: int = 4, T: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = MT19937(2024)  # llm.c's Mersenne Twister: the same tokens on every platform
    tok = np.array([rng.randint32() % 50257 for _ in range(B * T + 1)], dtype=np.int64)
    return tok[:-1].reshape(B, T), tok[1:].reshape(B, T)


def test_training_steps_match_llmcs_own_numbers():
    """train_step (chunked head, fp32 norm, clip, fused AdamW) reproduces llm.c's losses and norms
    within llm.c's log precision (4 decimals for the loss, 2 for the norm); measured with the oneDNN
    kernels: losses within 7.6e-6, norms within 4.5e-5 relative (the gradients differ by float rounding)."""
    model = GPT2(parse_descriptor("d2c64"), seed=42)
    params = [p for _, _, p in model.llmc_parameters()]
    opt = AdamW(params, [True] * len(params), weight_decay=0.1)  # train_gpt2.c: decay on every tensor
    batch = golden_batch()
    for step, (loss_llmc, norm_llmc) in enumerate(zip(LLMC_LOSSES, LLMC_NORMS)):
        loss, norm, _ = train_step(model, opt, [batch], lr=3e-3, t=step + 1)
        assert loss == pytest.approx(loss_llmc, abs=1e-4), step
        assert norm == pytest.approx(norm_llmc, rel=5e-4), step


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    model = GPT2(parse_descriptor("d2c64"), seed=7)
    idx = torch.randint(0, 50257, (3, 17))  # 51 rows: chunks of 16 leave a short last chunk
    return model, idx[:, :-1], idx[:, 1:]


def grads(model: GPT2) -> dict[str, torch.Tensor]:
    out = {f"{n}{'' if l is None else l}": p.grad.clone() for n, l, p in model.llmc_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def test_chunked_head_equals_full_logits_cross_entropy(model_and_batch):
    model, x, y = model_and_batch
    _, plain = model(x, y)  # all logits at once, F.cross_entropy
    plain.backward()
    expect = grads(model)
    chunked = model.loss(x, y, chunk=16)
    chunked.backward()
    got = grads(model)
    assert chunked.item() == pytest.approx(plain.item(), abs=1e-5)
    for name, g in expect.items():
        torch.testing.assert_close(got[name], g, atol=1e-7, rtol=1e-4, msg=name)
    assert torch.count_nonzero(got["wte"][50257:]) == 0  # padding rows get no gradient
    with torch.no_grad():  # validation: the loss alone, the same number
        assert model.loss(x, y, chunk=16).item() == pytest.approx(plain.item(), abs=1e-5)
    (model.loss(x, y) / 4).backward()  # a micro-batch's share under gradient accumulation
    torch.testing.assert_close(grads(model)["qkvw0"], expect["qkvw0"] / 4, atol=1e-8, rtol=1e-4)


def test_head_loss_matches_cross_entropy_on_its_own():
    torch.manual_seed(1)
    V, C = 50, 8
    h = torch.randn(13, C, requires_grad=True)
    weight = torch.randn(64, C)  # padded rows beyond V, like wte's 50304
    weight[V:] = 0
    weight.requires_grad_()
    t = torch.randint(0, V, (13,))
    buf = torch.empty(5, V)
    loss = head_loss(h, weight, t, V, buf)
    loss.backward()
    h2, w2 = h.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ref = F.cross_entropy(h2 @ w2[:V].T, t)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    torch.testing.assert_close(h.grad, h2.grad)
    torch.testing.assert_close(weight.grad, w2.grad)


def test_onednn_kernels_give_atens_loss_and_gradients(model_and_batch, monkeypatch):
    """The lm head's and the blocks' GEMMs on oneDNN (pipelines/onednn.py) against ATen's kernels."""
    from pipelines import onednn

    if not onednn.available():
        pytest.skip("this torch has no oneDNN linear op: ATen's kernels are the only path")
    model, x, y = model_and_batch
    fast = model.loss(x, y, chunk=16)
    fast.backward()
    got = grads(model)
    with torch.no_grad():
        fast_logits = model.logits(model.hidden(x))
    monkeypatch.setattr(onednn, "suits", lambda t: False)
    plain = model.loss(x, y, chunk=16)
    plain.backward()
    expect = grads(model)
    with torch.no_grad():
        torch.testing.assert_close(fast_logits, model.logits(model.hidden(x)), atol=1e-5, rtol=1e-5)
    assert fast.item() == pytest.approx(plain.item(), abs=1e-5)
    for name, g in expect.items():  # float rounding: measured <= 7e-7 of each tensor's largest entry
        assert float((got[name] - g).abs().max()) <= 1e-5 * float(g.abs().max()), name


def test_a_target_far_below_the_top_logit_keeps_a_finite_loss():
    """softmax underflows to 0 for a target ~100+ nats below the top: the loss falls back to
    logsumexp - logit instead of -log(0) = inf."""
    h = torch.tensor([[1.0], [1.0]], requires_grad=True)
    weight = torch.tensor([[100.0], [-100.0], [0.0], [0.0]], requires_grad=True)  # logits 100, -100, 0, 0
    loss = head_loss(h, weight, torch.tensor([1, 0]), 4, torch.empty(2, 4))
    assert loss.item() == pytest.approx((200.0 + 0.0) / 2, abs=1e-4)  # row 0: 200 nats; row 1: ~0
    loss.backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(weight.grad).all()


def test_keep_heap_takes_on_glibc():
    import platform

    from pipelines import onednn

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert onednn.keep_heap() is True


def test_the_logits_buffer_is_kept_across_steps(model_and_batch):
    """No (rows, V) block is allocated per step: the model keeps one and the loss reuses it."""
    model, x, y = model_and_batch
    model.loss(x, y).backward()
    first = model._head_buf.data_ptr()
    model.loss(x, y).backward()
    model.zero_grad(set_to_none=True)
    assert model._head_buf.data_ptr() == first


def llmc_adamw_float64(p, g, m, v, lr, t, wd, scale, beta1=0.9, beta2=0.95, eps=1e-8):
    """llmc/adamw.cuh's adamw_update written out in float64 numpy."""
    g = scale * g
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * p), m, v


def test_fused_adamw_is_llmcs_update():
    """Several steps with clipping on real model tensors: the fused step and llm.c's order of
    operations agree to float rounding with each other and with the float64 formula."""
    shape = parse_descriptor("d2c64")
    model, twin = GPT2(shape, seed=3), GPT2(shape, seed=3)
    named = model.llmc_parameters()
    decay = [n in DECAYED for n, _, _ in named]
    fused = AdamW([p for _, _, p in named], decay, 0.1)
    ref = AdamW([p for _, _, p in twin.llmc_parameters()], decay, 0.1)
    exact = [(p.detach().double().numpy().copy(), 0.0, 0.0) for p in fused.params]
    gen = torch.Generator().manual_seed(0)
    for t, scale in [(1, 1.0), (2, 0.5), (3, 1.0), (4, 0.8)]:
        gs = [torch.randn(p.shape, generator=gen) * 1e-2 for p in fused.params]
        for p, q, g in zip(fused.params, ref.params, gs):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step(6e-3, t, scale)
        ref.step_reference(6e-3, t, scale)
        exact = [llmc_adamw_float64(p, g.double().numpy(), m, v, 6e-3, t, 0.1 if d else 0.0, scale)
                 for (p, m, v), g, d in zip(exact, gs, decay)]
    for p, q, (e, m, v), om in zip(fused.params, ref.params, exact, fused.m):
        torch.testing.assert_close(p.detach(), q.detach(), atol=2e-7, rtol=1e-6)
        np.testing.assert_allclose(p.detach().numpy(), e, atol=2e-7, rtol=1e-6)
        np.testing.assert_allclose(om.numpy(), m, atol=1e-9, rtol=1e-5)


def test_grad_norm_is_fp32_and_accurate():
    """fp32 all the way, yet within 1e-6 of the float64 norm on a wte-sized gradient (llm.c's block
    sums are this accurate; a sequential fp32 sum over 3M elements is not)."""
    gen = torch.Generator().manual_seed(0)
    big = torch.nn.Parameter(torch.empty(50304, 64))
    big.grad = torch.randn(50304, 64, generator=gen) * torch.rand(50304, 64, generator=gen) ** 4 * 1e-2
    small = torch.nn.Parameter(torch.empty(64))
    small.grad = torch.randn(64, generator=gen)
    exact = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in (big, small)))
    assert grad_norm([big, small]) == pytest.approx(exact, rel=1e-6)
    assert big.grad.dtype == torch.float32
