"""llm.c's optimisation details: lr schedules (llmc/schedulers.h), AdamW (llmc/adamw.cuh) with weight
decay on 2D weights only, gradient clipping at norm 1.0, and the loss / grad-norm z-score detector
(llmc/outlier_detector.h) behind `-sl` / `-sg`.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from pipelines.errors import StudyError

SCHEDULES = ("cosine", "linear", "constant", "wsd")


def learning_rate(kind: str, step: int, lr: float, warmup: int, total_steps: int, final_frac: float) -> float:
    """llm.c's get_learning_rate for `step` (0-based) of `total_steps`."""
    if kind not in SCHEDULES:
        raise StudyError(f"unknown learning rate scheduler {kind!r} (llm.c has {', '.join(SCHEDULES)})")
    min_lr = lr * final_frac
    if kind == "constant":
        return lr
    if kind == "wsd":  # warmup, stable, then 1 - sqrt decay over the last 20% (arXiv:2405.18392)
        decay_point = int(0.8 * total_steps)
        if step < warmup:
            return lr * (step + 1) / warmup
        if step < decay_point:
            return lr
        ratio = (step - decay_point) / (total_steps - decay_point)
        return min_lr + (1.0 - math.sqrt(ratio)) * (lr - min_lr)
    if step < warmup:  # cosine and linear: linear warmup to lr ...
        return lr * (step + 1) / warmup
    ratio = (step - warmup) / (total_steps - warmup)  # ... then decay to lr * final_frac
    if kind == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)
    return lr - ratio * (lr - min_lr)


class AdamW:
    """llm.c's AdamW (llmc/adamw.cuh): m, v in fp32 over the parameters in llm.c's flat order; t = step + 1;
    g = grad_scale * grad; m = lerp(g, m, beta1); v = lerp(g^2, v, beta2);
    param -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * param), with wd only where `decay` is True.

    step() runs torch's fused CPU kernel (one threaded pass over p, g, m, v per tensor) on the same
    update written as p -= lr * wd * p; p -= (lr / c1) * m / (sqrt(v) / sqrt(c2) + eps): the same
    numbers up to float rounding (tests/test_train_optim.py holds it to step_reference, llm.c's order
    of operations one tensor at a time, and both to llm.c's update in float64)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: list[bool], weight_decay: float,
                 beta1: float = 0.9, beta2: float = 0.95, eps: float = 1e-8):
        self.params, self.decay = params, decay
        self.wd, self.beta1, self.beta2, self.eps = weight_decay, beta1, beta2, eps
        self.m = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.v = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        # (positions, weight decay): the decayed tensors and the others, one fused call each
        self.groups = [(idx, wd) for idx, wd in (([i for i, d in enumerate(decay) if d], weight_decay),
                                                 ([i for i, d in enumerate(decay) if not d], 0.0)) if idx]

    @torch.no_grad()
    def step(self, lr: float, t: int, grad_scale: float = 1.0) -> None:
        """One update from the parameters' .grad, which it scales in place (they are spent after it)."""
        grads = [p.grad for p in self.params]
        if grad_scale != 1.0:
            torch._foreach_mul_(grads, grad_scale)  # llm.c: g = grad_scale * grad, before m and v
        t_ = torch.tensor(float(t))  # the kernel's bias corrections: 1 - beta^t
        for idx, wd in self.groups:
            pick = lambda ts: [ts[i] for i in idx]  # noqa: E731
            torch._fused_adamw_(pick(self.params), pick(grads), pick(self.m), pick(self.v), [], [t_] * len(idx),
                                lr=lr, beta1=self.beta1, beta2=self.beta2, weight_decay=wd, eps=self.eps,
                                amsgrad=False, maximize=False)

    @torch.no_grad()
    def step_reference(self, lr: float, t: int, grad_scale: float = 1.0) -> None:
        """The same update in llm.c's order of operations, one tensor at a time (slower; for tests)."""
        c1, c2 = 1.0 - self.beta1**t, 1.0 - self.beta2**t
        for p, m, v, decay in zip(self.params, self.m, self.v, self.decay):
            g = p.grad if grad_scale == 1.0 else p.grad * grad_scale
            m.lerp_(g, 1.0 - self.beta1)  # m = beta1 m + (1 - beta1) g
            v.lerp_(g * g, 1.0 - self.beta2)
            update = (m / c1) / ((v / c2).sqrt_() + self.eps)
            if decay and self.wd:
                update.add_(p, alpha=self.wd)
            p.sub_(update, alpha=lr)


@torch.no_grad()
def grad_norm(params: list[torch.nn.Parameter]) -> float:
    """L2 norm of all gradients in fp32, as llm.c's gpt2_calculate_grad_norm: fp32 squares summed in
    fp32 by a pairwise (cascade) sum, as accurate as llm.c's block sums (~1e-7 relative). No float64
    copy of any gradient; not torch's fp32 vector_norm either, whose sum drifts ~1e-4 on a 6M-element
    wte gradient (tests/test_train_optim.py)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    square = torch.empty(max(g.numel() for g in grads), dtype=torch.float32)  # one buffer, reused per tensor
    sums = [torch.mul(g, g, out=square[: g.numel()].view_as(g)).sum() for g in grads]
    return float(torch.stack(sums).sum().sqrt())


def clip_scale(norm: float, clip: float = 1.0) -> float:
    """llm.c: grads are scaled by clip / norm when the norm exceeds clip (1.0)."""
    return clip / norm if norm > clip else 1.0


class OutlierDetector:
    """z-score of a value against the previous 128 (NaN until the window is full)."""

    WINDOW = 128

    def __init__(self):
        self.buf: deque[float] = deque(maxlen=self.WINDOW)

    def update(self, x: float) -> float:
        full = len(self.buf) == self.WINDOW
        self.buf.append(x)
        if not full:
            return float("nan")
        mean = sum(self.buf) / self.WINDOW
        var = sum(b * b for b in self.buf) / self.WINDOW - mean * mean
        return 0.0 if var <= 0 else (x - mean) / math.sqrt(var)
