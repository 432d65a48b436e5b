"""CPU kernels for torch work: oneDNN's matmul where torch has it, and a heap that keeps its blocks.

Why: on AMD CPUs MKL's sgemm (ATen's default BLAS for float32) takes its generic path. Measured on this
project's 2-core EPYC, float32: MKL 96-190 GFLOP/s, oneDNN 231-440 on the same shapes (the scorer's
projections, the trainer's lm-head gradients), outputs equal up to float rounding (~3e-6 relative).

    linear(x, w, b)   x (N, K), w (M, K) -> x w^T + b (N, M); strided x and w are taken as they are
    linear_mode()     a torch function mode: inside it every CPU F.linear runs through `linear`
    available()       False where torch lacks the op (it is private: torch.ops.mkldnn._linear_pointwise);
                      callers then keep ATen's kernels
    suits(t)          a CPU float32 / bfloat16 tensor, and oneDNN available
    keep_heap()       glibc malloc keeps freed blocks (up to 32 MB each) for reuse: called by the trainer,
                      the scorer and the generate backend on a CPU

torch is imported on first use: the LLM backends import this module without loading torch.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def available() -> bool:
    import torch

    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def suits(t) -> bool:
    import torch

    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16) and available()


def linear(x, w, b=None):
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


@functools.cache
def _mode_class():
    import torch
    from torch.overrides import TorchFunctionMode

    class OneDNNLinear(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.nn.functional.linear:
                x, w = args[0], args[1]
                b = args[2] if len(args) > 2 else kwargs.get("bias")
                if w.dim() == 2 and w.is_contiguous() and x.dtype == w.dtype and suits(x):
                    return linear(x, w, b)
            return func(*args, **kwargs)

    return OneDNNLinear


def linear_mode():
    """`with linear_mode():` every CPU `F.linear` (all of a transformers model's projections and its lm
    head) runs through oneDNN in the same dtype; other ops pass through. The model is not modified
    (lm-eval, scoring the same model object in the benchmark, keeps its own kernels). The whole forward
    of SmolLM2-135M went from ~400 to ~690 tokens/s on one thread."""
    return _mode_class()()


def keep_heap() -> bool:
    """glibc malloc: blocks up to its 32 MB maximum from the heap, and a freed heap kept unless over 1 GB.
    Otherwise blocks this size (an lm head's (128, V) logits, a batch's MLP activations) are unmapped and
    mapped afresh, zeroed page by page: 47k page faults and ~60 of 280 ms per d4c128 training step;
    ~8% of SmolLM2-135M's scoring. Process-wide and harmless elsewhere; without glibc it does nothing.
    True when both settings took."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # M_MMAP_THRESHOLD (also stops its dynamic adjustment), M_TRIM_THRESHOLD; mallopt returns 1 on success
    return libc.mallopt(-3, 32 << 20) == 1 and libc.mallopt(-1, 1 << 30) == 1
