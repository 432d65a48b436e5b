"""llm.c's GPT-2 in PyTorch, its checkpoint files (read and write), and export to Hugging Face.

The model is llm.c's (and train_gpt2.py's): learned position embeddings, pre-LayerNorm blocks
(eps 1e-5), GELU with the tanh approximation, the lm head tied to the token embedding, no dropout.
The token embedding has llm.c's padded vocabulary Vp = 50304 rows; rows 50257.. stay zero (they
get no gradient because the logits are only computed for the real 50257 tokens). Training and
validation take GPT2.loss: the tied lm head and cross-entropy `HEAD_CHUNK` rows at a time, the
gradients computed in the forward pass as llm.c's fused classifier does (no B*T x V logits,
softmax or gradient temporaries: 206 MB each at B8 x T128; the same numbers as forward's plain path
up to float rounding, tests/test_train_optim.py).

Initialisation is llm.c's gpt_build_from_descriptor: one Mersenne-Twister generator seeded 42
draws, in this order, wte (first V rows), wpe, then per layer qkvw, attprojw, fcw, fcprojw, from
N(0, 0.02), with the two projections back into the residual stream (attprojw, fcprojw) at
0.02 / sqrt(2 L); biases 0, LayerNorm weights 1. torch's CPU generator is the same Mersenne
Twister and the same normal_ (llm.c's rand.h copies it), so seed 42 gives llm.c's weights.

Checkpoint `model_%08d.bin` (docs/design.md, "Formats fixed by others"): 256 int32 header ([0]=20240326, [1]=3 fp32 or 5 bf16,
[2]=maxT, [3]=V, [4]=L, [5]=NH, [6]=C, [7]=Vp), then the 16 tensors of shapes.PARAM_ORDER flat,
per-layer tensors stacked over layers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines import onednn
from pipelines.errors import StudyError
from pipelines.files import atomic_open
from pipelines.llmc.shapes import PARAM_ORDER, GPT2Shape, parse_descriptor
from pipelines.llmc.tokenizer import _valid, cached_bpe_path

MODEL_MAGIC = 20240326
VERSION_FP32 = 3
VERSION_BF16 = 5
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


# ---------------------------------------------------------------------------------------------
# the tied lm head and cross-entropy, in chunks of rows (llm.c's fused_classifier, on CPU)

HEAD_CHUNK = 128  # rows per chunk: a (128, 50257) fp32 block (26 MB); oneDNN's GEMMs peak here, and glibc
# reuses blocks this size (256-row blocks were mapped afresh on every call: ~50k page faults per step)


def _fast(h: torch.Tensor) -> bool:
    """The lm head's three GEMMs through oneDNN (2.0-2.9x MKL's on AMD, pipelines/onednn.py) where torch has it."""
    return onednn.suits(h)


def _head_chunks(h: torch.Tensor, W: torch.Tensor, targets: torch.Tensor, buf: torch.Tensor, grads: bool):
    """Yield, per chunk of rows r0:r1, (r0, r1, loss per row, probs): probs (r1 - r0, V) holds
    softmax(logits), minus onehot(target) when grads is True (the logits' gradient, unscaled). The
    logits go to `buf` (ATen) or a block of its size (oneDNN)."""
    N, chunk, fast = h.shape[0], buf.shape[0], _fast(h)
    for r0 in range(0, N, chunk):
        r1 = min(N, r0 + chunk)
        t = targets[r0:r1, None]
        if fast:
            logits = onednn.linear(h[r0:r1], W)  # (n, C) x (C, V)
        else:
            logits = torch.mm(h[r0:r1], W.t(), out=buf[: r1 - r0])
        probs = torch.softmax(logits, dim=1)  # one fused kernel: 2.5x the max / exp / sum / divide passes
        p = probs.gather(1, t)
        loss = -p.log().squeeze(1)  # as llm.c's fused classifier: -log(prob[target])
        tiny = p.squeeze(1) < 1e-30  # prob underflowed (a target ~69+ nats below the top): logsumexp - logit
        if bool(tiny.any()):
            loss[tiny] = torch.logsumexp(logits[tiny], dim=1) - logits[tiny].gather(1, t[tiny]).squeeze(1)
        if grads:
            probs.scatter_add_(1, t, torch.full_like(p, -1.0))  # - onehot(target)
        yield r0, r1, loss, probs


class _HeadLoss(torch.autograd.Function):
    """Mean cross-entropy of logits = h W[:V]^T, gradients computed in the forward pass chunk by chunk
    (as llm.c's fused classifier does): backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, h, weight, targets, V: int, buf):  # h (N, C), weight (Vp, C), targets (N,)
        N, W = h.shape[0], weight[:V]
        dh = torch.empty_like(h)
        dW = torch.empty_like(weight)
        dW[V:].zero_()  # padding rows get no gradient
        losses = torch.empty(N, dtype=h.dtype)
        # oneDNN: dh = dlogits W as dlogits (W^T)^T, and dW^T (C, V) = h^T dlogits accumulated, transposed once
        fast = _fast(h)
        Wt = W.t().contiguous() if fast else None  # (C, V)
        dWt = None
        for r0, r1, loss, dlogits in _head_chunks(h, W, targets, buf, grads=True):
            losses[r0:r1] = loss
            dlogits.div_(N)  # d(mean loss) / d(logits)
            if fast:
                dh[r0:r1] = onednn.linear(dlogits, Wt)  # (n, V) x (V, C)
                part = onednn.linear(h[r0:r1].t(), dlogits.t())  # (C, n) x (n, V)
                dWt = part if dWt is None else dWt.add_(part)
            elif r0 == 0:
                torch.mm(dlogits, W, out=dh[r0:r1])  # (n, V) x (V, C)
                torch.mm(dlogits.t(), h[r0:r1], out=dW[:V])  # (V, n) x (n, C)
            else:
                torch.mm(dlogits, W, out=dh[r0:r1])
                dW[:V].addmm_(dlogits.t(), h[r0:r1])
        if dWt is not None:
            dW[:V].copy_(dWt.t())
        ctx.grads = [dh, dW]
        return losses.mean()

    @staticmethod
    def backward(ctx, grad):
        dh, dW = ctx.grads
        ctx.grads = None  # hand the tensors over: autograd accumulates into them without a copy
        if float(grad) != 1.0:  # e.g. loss / grad_accum
            dh.mul_(grad)
            dW.mul_(grad)
        return dh, dW, None, None, None


def head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, V: int,
              buf: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over rows of h (N, C) against targets (N,) with the lm head weight[:V] (tied to
    the (Vp, C) token embedding), `buf.shape[0]` rows at a time; equal to F.cross_entropy(h W[:V]^T,
    targets) up to float rounding. Under torch.no_grad() (validation) only the loss is computed."""
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _HeadLoss.apply(h, weight, targets, V, buf)
    losses = torch.empty(h.shape[0], dtype=h.dtype)
    for r0, r1, loss, _ in _head_chunks(h, weight[:V], targets, buf, grads=False):
        losses[r0:r1] = loss
    return losses.mean()


class _Linear(torch.autograd.Function):
    """y = x w^T + b with its three GEMMs on oneDNN (1.4-2x MKL's at d4c128's block shapes)."""

    @staticmethod
    def forward(ctx, x, w, b):  # x (N, K), w (M, K), b (M,) -> (N, M)
        ctx.save_for_backward(x, w)
        return onednn.linear(x, w, b)

    @staticmethod
    def backward(ctx, dy):  # dy (N, M)
        x, w = ctx.saved_tensors
        dx = onednn.linear(dy, w.t().contiguous())  # (N, M) x (M, K)
        dw = onednn.linear(dy.t(), x.t())  # (M, N) x (N, K)
        return dx, dw, dy.sum(0)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose GEMMs run on oneDNN where _fast says so."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fast(x):
            return super().forward(x)
        return _Linear.apply(x.reshape(-1, x.shape[-1]), self.weight, self.bias).view(*x.shape[:-1], -1)


class Block(nn.Module):
    def __init__(self, C: int, NH: int):
        super().__init__()
        self.n_head = NH
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.qkv = Linear(C, 3 * C)  # llm.c qkvw (3C, C), qkvb (3C)
        self.attproj = Linear(C, C)  # attprojw (C, C)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.fc = Linear(C, 4 * C)  # fcw (4C, C)
        self.fcproj = Linear(4 * C, C)  # fcprojw (C, 4C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, NH, T, hs); causal attention scaled by 1/sqrt(hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attproj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.fcproj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, shape: GPT2Shape, seed: int | None = 42):
        """seed None: parameters are left uninitialised (load a checkpoint into them)."""
        super().__init__()
        self.shape = shape
        C, L = shape.channels, shape.num_layers
        with torch.device("meta"):  # no throw-away default init; real storage comes next
            self.wte = nn.Embedding(shape.padded_vocab_size, C)  # (Vp, C), also the lm head
            self.wpe = nn.Embedding(shape.max_seq_len, C)  # (maxT, C)
            self.h = nn.ModuleList(Block(C, shape.num_heads) for _ in range(L))
            self.ln_f = nn.LayerNorm(C, eps=1e-5)
        self.to_empty(device="cpu")
        if seed is not None:
            self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int = 42) -> None:
        """llm.c's initialisation (see the module docstring); seed 42 reproduces train_gpt2cu's."""
        g = torch.Generator().manual_seed(seed)
        V, L = self.shape.vocab_size, self.shape.num_layers
        std, std_resid = 0.02, 0.02 / math.sqrt(2 * L)
        self.wte.weight.zero_()
        self.wte.weight[:V].normal_(0.0, std, generator=g)  # padding rows stay 0
        self.wpe.weight.normal_(0.0, std, generator=g)
        for b in self.h:
            b.qkv.weight.normal_(0.0, std, generator=g)
            b.attproj.weight.normal_(0.0, std_resid, generator=g)
            b.fc.weight.normal_(0.0, std, generator=g)
            b.fcproj.weight.normal_(0.0, std_resid, generator=g)
            for lin in (b.qkv, b.attproj, b.fc, b.fcproj):
                lin.bias.zero_()
        for ln in [self.ln_f] + [m for b in self.h for m in (b.ln_1, b.ln_2)]:
            ln.weight.fill_(1.0)
            ln.bias.zero_()

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, C) final-LayerNorm hidden states."""
        T = idx.shape[1]
        if T > self.shape.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's max_seq_len {self.shape.max_seq_len}")
        x = self.wte(idx) + self.wpe.weight[:T]
        for block in self.h:
            x = block(x)
        return self.ln_f(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., C) -> logits (..., V) over the real vocabulary (the tied lm head)."""
        W = self.wte.weight[: self.shape.vocab_size]
        if _fast(h) and not torch.is_grad_enabled():  # oneDNN (no autograd of its own): evaluation only
            return onednn.linear(h.reshape(-1, h.shape[-1]), W).view(*h.shape[:-1], -1)
        return F.linear(h, W)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """(B, T) ids -> logits (B, T, V); with targets also the mean cross-entropy loss. The plain
        path (all B*T x V logits at once): training and validation use `loss`, which is the same number."""
        logits = self.logits(self.hidden(idx))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, chunk: int = HEAD_CHUNK) -> torch.Tensor:
        """(B, T) ids and targets -> the mean cross-entropy, the lm head and softmax taken `chunk` rows
        at a time (head_loss): no (B*T, V) logits, softmax or gradient temporaries."""
        h = self.hidden(idx)
        return head_loss(h.reshape(-1, h.shape[-1]), self.wte.weight, targets.reshape(-1), self.shape.vocab_size,
                         self._workspace(min(chunk, h.shape[0] * h.shape[1])))

    def _workspace(self, rows: int) -> torch.Tensor:
        """One (rows, V) logits buffer kept across steps: reusing it maps no fresh pages per step."""
        buf = getattr(self, "_head_buf", None)  # a plain attribute: not in state_dict, not a parameter
        if buf is None or buf.shape[0] < rows:
            buf = self._head_buf = torch.empty(rows, self.shape.vocab_size)
        return buf[:rows]

    # ---- llm.c layout: the 16 tensors, per-layer ones stacked (L, ...)
    def llmc_tensors(self) -> dict[str, torch.Tensor]:
        """Parameters in llm.c's checkpoint order and shapes (copies for the stacked ones)."""
        h = self.h
        stack = lambda f: torch.stack([f(b).detach() for b in h])  # noqa: E731
        return {
            "wte": self.wte.weight.detach(), "wpe": self.wpe.weight.detach(),
            "ln1w": stack(lambda b: b.ln_1.weight), "ln1b": stack(lambda b: b.ln_1.bias),
            "qkvw": stack(lambda b: b.qkv.weight), "qkvb": stack(lambda b: b.qkv.bias),
            "attprojw": stack(lambda b: b.attproj.weight), "attprojb": stack(lambda b: b.attproj.bias),
            "ln2w": stack(lambda b: b.ln_2.weight), "ln2b": stack(lambda b: b.ln_2.bias),
            "fcw": stack(lambda b: b.fc.weight), "fcb": stack(lambda b: b.fc.bias),
            "fcprojw": stack(lambda b: b.fcproj.weight), "fcprojb": stack(lambda b: b.fcproj.bias),
            "lnfw": self.ln_f.weight.detach(), "lnfb": self.ln_f.bias.detach(),
        }

    def llmc_parameters(self) -> list[tuple[str, int | None, nn.Parameter]]:
        """(llm.c tensor name, layer or None, parameter) in llm.c's flat order: the order of the
        checkpoint, of AdamW's m and v in a state file, and of llm.c's weight-decay choice."""
        per_layer = {"ln1w": ("ln_1", "weight"), "ln1b": ("ln_1", "bias"), "qkvw": ("qkv", "weight"),
                     "qkvb": ("qkv", "bias"), "attprojw": ("attproj", "weight"), "attprojb": ("attproj", "bias"),
                     "ln2w": ("ln_2", "weight"), "ln2b": ("ln_2", "bias"), "fcw": ("fc", "weight"),
                     "fcb": ("fc", "bias"), "fcprojw": ("fcproj", "weight"), "fcprojb": ("fcproj", "bias")}
        out: list[tuple[str, int | None, nn.Parameter]] = [("wte", None, self.wte.weight),
                                                           ("wpe", None, self.wpe.weight)]
        for name in PARAM_ORDER[2:14]:
            mod, attr = per_layer[name]
            out.extend((name, l, getattr(getattr(b, mod), attr)) for l, b in enumerate(self.h))
        out += [("lnfw", None, self.ln_f.weight), ("lnfb", None, self.ln_f.bias)]
        return out

    @torch.no_grad()
    def load_llmc_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = self.shape.param_shapes()
        for name in PARAM_ORDER:
            if tuple(tensors[name].shape) != expected[name]:
                raise StudyError(f"tensor {name}: shape {tuple(tensors[name].shape)}, expected {expected[name]}")
        for name, layer, p in self.llmc_parameters():
            src = tensors[name] if layer is None else tensors[name][layer]
            p.copy_(src.to(p.dtype))


def build_model(descriptor: str, seed: int = 42) -> GPT2:
    """A freshly initialised model from a descriptor (d12, d4c128) or an llm.c .bin checkpoint."""
    if descriptor.endswith(".bin"):
        return load_checkpoint(descriptor)
    return GPT2(parse_descriptor(descriptor), seed=seed)


# ---------------------------------------------------------------------------------------------
# llm.c checkpoint files


def checkpoint_header(shape: GPT2Shape, version: int) -> np.ndarray:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:8] = (MODEL_MAGIC, version, shape.max_seq_len, shape.vocab_size, shape.num_layers,
                  shape.num_heads, shape.channels, shape.padded_vocab_size)
    return header


def _bf16_bytes(t: torch.Tensor) -> bytes:
    # numpy has no bfloat16: round to bf16 in torch (nearest even, as train_gpt2.py) and write the bits
    return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype("<i2", copy=False).tobytes()


def write_checkpoint(model: GPT2, path: str | Path, dtype: str = "fp32") -> Path:
    """Write llm.c's model file (v3 fp32 or v5 bf16) atomically (files.atomic_open)."""
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be fp32 or bf16, not {dtype!r}")
    path = Path(path)
    version = VERSION_FP32 if dtype == "fp32" else VERSION_BF16
    with atomic_open(path, "wb") as f:
        f.write(checkpoint_header(model.shape, version).tobytes())
        for t in model.llmc_tensors().values():  # one tensor at a time: no full-model copy in memory
            f.write(t.detach().float().contiguous().numpy().astype("<f4", copy=False).tobytes()
                    if dtype == "fp32" else _bf16_bytes(t))
    return path


def read_checkpoint_header(path: str | Path) -> tuple[GPT2Shape, int]:
    """Validate an llm.c model file like gpt2_build_from_checkpoint, plus its exact size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise StudyError(f"{path}: cannot read llm.c checkpoint: {e}") from None
    if len(raw) < HEADER_BYTES:
        raise StudyError(f"{path}: {len(raw)} bytes, shorter than llm.c's 1024-byte checkpoint header")
    h = np.frombuffer(raw, dtype="<i4")
    if h[0] != MODEL_MAGIC:
        raise StudyError(f"{path}: bad magic {h[0]} (expected {MODEL_MAGIC}): not an llm.c model checkpoint")
    version = int(h[1])
    if version not in (VERSION_FP32, VERSION_BF16):
        raise StudyError(f"{path}: checkpoint version {version}; llm.c reads 3 (fp32) and 5 (bf16) only")
    shape = GPT2Shape(num_layers=int(h[4]), channels=int(h[6]), num_heads=int(h[5]), max_seq_len=int(h[2]),
                      vocab_size=int(h[3]), padded_vocab_size=int(h[7]))
    if min(shape.num_layers, shape.channels, shape.num_heads, shape.max_seq_len) <= 0 or \
            shape.channels % shape.num_heads or shape.padded_vocab_size < shape.vocab_size:
        raise StudyError(f"{path}: inconsistent header {h[:8].tolist()}")
    expected = HEADER_BYTES + shape.num_parameters * (4 if version == VERSION_FP32 else 2)
    if size != expected:
        raise StudyError(f"{path}: {size} bytes, but a v{version} checkpoint of {shape.describe()} has "
                         f"{expected} bytes: truncated or corrupt")
    return shape, version


def read_checkpoint(path: str | Path) -> tuple[GPT2Shape, int, dict[str, torch.Tensor]]:
    """(shape, version, the 16 tensors as float32 in llm.c shapes)."""
    shape, version = read_checkpoint_header(path)
    dt = "<f4" if version == VERSION_FP32 else "<i2"
    flat = np.fromfile(path, dtype=dt, offset=HEADER_BYTES)
    tensors, pos = {}, 0
    for name, shp in shape.param_shapes().items():
        n = math.prod(shp)
        chunk = torch.from_numpy(flat[pos : pos + n].copy())
        tensors[name] = (chunk if version == VERSION_FP32 else chunk.view(torch.bfloat16).float()).view(shp)
        pos += n
    return shape, version, tensors


def load_checkpoint(path: str | Path) -> GPT2:
    shape, _, tensors = read_checkpoint(path)
    model = GPT2(shape, seed=None)
    model.load_llmc_tensors(tensors)
    return model


# ---------------------------------------------------------------------------------------------
# Hugging Face export


def hf_state_dict(model: GPT2) -> dict[str, torch.Tensor]:
    """Our parameters under GPT2LMHeadModel's names. HF's Conv1D stores weights as (in, out), so the
    linear weights are transposed; the embedding keeps the V real rows; lm_head is tied to wte."""
    V = model.shape.vocab_size
    sd = {"transformer.wte.weight": model.wte.weight[:V], "transformer.wpe.weight": model.wpe.weight,
          "transformer.ln_f.weight": model.ln_f.weight, "transformer.ln_f.bias": model.ln_f.bias}
    for i, b in enumerate(model.h):
        p = f"transformer.h.{i}."
        sd.update({
            p + "ln_1.weight": b.ln_1.weight, p + "ln_1.bias": b.ln_1.bias,
            p + "attn.c_attn.weight": b.qkv.weight.t(), p + "attn.c_attn.bias": b.qkv.bias,
            p + "attn.c_proj.weight": b.attproj.weight.t(), p + "attn.c_proj.bias": b.attproj.bias,
            p + "ln_2.weight": b.ln_2.weight, p + "ln_2.bias": b.ln_2.bias,
            p + "mlp.c_fc.weight": b.fc.weight.t(), p + "mlp.c_fc.bias": b.fc.bias,
            p + "mlp.c_proj.weight": b.fcproj.weight.t(), p + "mlp.c_proj.bias": b.fcproj.bias,
        })
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def export_hf(model_or_path: GPT2 | str | Path, out_dir: str | Path, tokenizer: bool = True,
              log=print) -> Path:
    """Write a folder that `GPT2LMHeadModel.from_pretrained` and lm-evaluation-harness
    (`--model hf --model_args pretrained=<dir>`) load: model.safetensors + config.json +
    generation_config.json, and GPT-2 tokenizer files (see write_gpt2_tokenizer)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = model_or_path if isinstance(model_or_path, GPT2) else load_checkpoint(model_or_path)
    s = model.shape
    config = GPT2Config(
        vocab_size=s.vocab_size, n_positions=s.max_seq_len, n_embd=s.channels, n_layer=s.num_layers,
        n_head=s.num_heads, activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=50256, eos_token_id=50256,
        tie_word_embeddings=True, architectures=["GPT2LMHeadModel"],
    )
    with torch.device("meta"):  # no random init of a model we overwrite entirely
        hf = GPT2LMHeadModel(config)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight" and not k.endswith(".attn.bias")]
    if missing or unexpected:
        raise StudyError(f"export to GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    for name, buf in list(hf.named_buffers()):  # non-persistent buffers (causal masks) are still on meta
        if buf.is_meta:
            raise StudyError(f"export to GPT2LMHeadModel: buffer {name} was not materialised")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    if tokenizer:
        written = write_gpt2_tokenizer(out)
        log(f"export: {out} (model + {'tokenizer: ' + ', '.join(written) if written else 'no tokenizer files'})")
    return out


def write_gpt2_tokenizer(out_dir: Path) -> list[str]:
    """GPT-2 tokenizer files made offline from the GPT-2 BPE ranks (the r50k_base file tiktoken uses;
    `study assets` provides it): tokenizer.json (fast tokenizer, by transformers' TikTokenConverter),
    vocab.json + merges.txt (the same BPE model) and tokenizer_config.json. Nothing is downloaded;
    returns [] when the rank file is missing."""
    bpe = cached_bpe_path()
    if not _valid(bpe):
        return []
    import tiktoken
    from transformers import GPT2TokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    enc = tiktoken.get_encoding("r50k_base")
    tok = TikTokenConverter(vocab_file=str(bpe), pattern=enc._pat_str,
                            extra_special_tokens={"<|endoftext|>": 50256}).converted()
    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>", model_max_length=1024)
    fast.save_pretrained(out_dir)
    tok.model.save(str(out_dir))  # vocab.json + merges.txt
    return sorted(p.name for p in out_dir.iterdir() if p.name.startswith(("tokenizer", "vocab", "merges", "special")))
