"""oneDNN's matmul for CPU linear algebra, where torch has it.

Why: on AMD CPUs MKL's sgemm (ATen's default BLAS for float32) takes its generic path. Measured on this
project's 2-core EPYC, float32: MKL 96-190 GFLOP/s, oneDNN 231-440 on the same shapes (the scorer's
projections, the trainer's lm-head gradients), outputs equal up to float rounding (~3e-6 relative).

    linear(x, w, b)   x (N, K), w (M, K) -> x w^T + b (N, M); strided x and w are taken as they are
    OneDNNLinear()    a torch function mode: inside it every CPU F.linear runs through `linear`
    available()       False where torch lacks the op (it is private: torch.ops.mkldnn._linear_pointwise);
                      callers then keep ATen's kernels
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

DTYPES = (torch.float32, torch.bfloat16)


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


class OneDNNLinear(TorchFunctionMode):
    """Inside `with OneDNNLinear():`, every CPU `F.linear` (all of a transformers model's projections and
    its lm head) runs through oneDNN in the same dtype; other ops pass through. The model is not modified
    (lm-eval, scoring the same model object in the benchmark, keeps its own kernels). The whole forward
    of SmolLM2-135M went from ~400 to ~690 tokens/s on one thread."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if (x.device.type == "cpu" and w.dim() == 2 and w.is_contiguous() and x.dtype == w.dtype
                    and x.dtype in DTYPES):
                return linear(x, w, b)
        return func(*args, **kwargs)
