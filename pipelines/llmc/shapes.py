"""GPT-2 shapes by model descriptor, without importing torch (config.py uses this for derived values).

llm.c's `train_gpt2cu -e <descriptor>` builds these GPT-2 models (gpt2_set_hyperparameters), all
with max_seq_len 1024, vocab 50257 padded to 50304:

  descriptor  layers  channels  heads  parameters (with the padded vocab)
  d6               6       384      6     30M  (llm.c's unofficial "gpt2-tiny")
  d12             12       768     12    124M  GPT-2 small
  d24             24      1024     16    350M  GPT-2 medium
  d36             36      1280     20    774M  GPT-2 large
  d48             48      1600     25   1558M  GPT-2 XL
  (d60, d72, d84: llm.c's unofficial 2.7B / 7.3B / 12.2B)

For CPU runs this project adds `d<L>c<C>`: L layers of C channels, heads of 32 channels
(C / 32 heads), max_seq_len 1024, same vocab. Only the torch backend builds them (llm.c has no
such descriptor). The presets use

  d2c64      2 layers,  64 channels, 2 heads   3.4M parameters (3.2M of them the token embedding)
  d4c128     4 layers, 128 channels, 4 heads   7.4M (6.4M embedding)
  d6c192     6 layers, 192 channels, 6 heads  12.5M (9.7M embedding)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipelines.errors import StudyError

VOCAB = 50257  # GPT-2 BPE
PADDED_VOCAB = 50304  # llm.c pads to a multiple of 128 for its kernels; padding rows of wte stay zero
MAX_SEQ_LEN = 1024
HEAD_SIZE_CPU = 32

# llm.c gpt2_set_hyperparameters: depth -> (channels, heads)
LLMC_DEPTHS = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25),
               60: (1920, 30), 72: (2880, 30), 84: (3456, 36)}

# llm.c's parameter tensors, in checkpoint order, as (name, shape in terms of Vp, maxT, L, C)
PARAM_ORDER = ("wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
               "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb")
DECAYED = frozenset({"wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"})  # llm.c: weight decay on these only


@dataclass(frozen=True)
class GPT2Shape:
    num_layers: int
    channels: int
    num_heads: int
    max_seq_len: int = MAX_SEQ_LEN
    vocab_size: int = VOCAB
    padded_vocab_size: int = PADDED_VOCAB

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """llm.c's fill_in_parameter_sizes, in checkpoint order; linear weights are (out, in)."""
        Vp, T, L, C = self.padded_vocab_size, self.max_seq_len, self.num_layers, self.channels
        return {
            "wte": (Vp, C), "wpe": (T, C),
            "ln1w": (L, C), "ln1b": (L, C),
            "qkvw": (L, 3 * C, C), "qkvb": (L, 3 * C),
            "attprojw": (L, C, C), "attprojb": (L, C),
            "ln2w": (L, C), "ln2b": (L, C),
            "fcw": (L, 4 * C, C), "fcb": (L, 4 * C),
            "fcprojw": (L, C, 4 * C), "fcprojb": (L, C),
            "lnfw": (C,), "lnfb": (C,),
        }

    @property
    def num_parameters(self) -> int:
        total = 0
        for shape in self.param_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def flops_per_token(self, seq_len: int) -> int:
        """llm.c's gpt2_estimate_mfu: 6N for the weight matmuls (forward + backward) plus attention."""
        return 6 * self.num_parameters + 6 * self.num_layers * self.channels * seq_len

    def describe(self) -> str:
        return (f"L={self.num_layers} C={self.channels} NH={self.num_heads} maxT={self.max_seq_len} "
                f"({self.num_parameters / 1e6:.1f}M parameters)")


_LLMC = re.compile(r"^(?:gpt2:)?d(\d+)$")
_CPU = re.compile(r"^d(\d+)c(\d+)$")


def is_llmc_descriptor(descriptor: str) -> bool:
    """True when train_gpt2cu builds this descriptor itself (`-e d12`, `-e gpt2:d48`)."""
    m = _LLMC.match(descriptor)
    return bool(m) and int(m.group(1)) in LLMC_DEPTHS


def parse_descriptor(descriptor: str) -> GPT2Shape:
    """`d12` / `gpt2:d12` (llm.c) or `d4c128` (CPU, this project) -> shape. .bin paths: see model.py."""
    m = _LLMC.match(descriptor)
    if m:
        depth = int(m.group(1))
        if depth not in LLMC_DEPTHS:
            raise StudyError(f"model {descriptor!r}: llm.c builds GPT-2 depths {sorted(LLMC_DEPTHS)} only; "
                             f"for a small CPU model use d<layers>c<channels>, e.g. d4c128")
        channels, heads = LLMC_DEPTHS[depth]
        return GPT2Shape(depth, channels, heads)
    m = _CPU.match(descriptor)
    if m:
        layers, channels = int(m.group(1)), int(m.group(2))
        if layers < 1 or channels < HEAD_SIZE_CPU or channels % HEAD_SIZE_CPU:
            raise StudyError(f"model {descriptor!r}: channels must be a positive multiple of {HEAD_SIZE_CPU} "
                             f"(heads of {HEAD_SIZE_CPU} channels) and layers >= 1")
        return GPT2Shape(layers, channels, channels // HEAD_SIZE_CPU)
    raise StudyError(f"model {descriptor!r}: expected an llm.c descriptor (d12, d24, d36, d48, or gpt2:d12), "
                     f"a CPU descriptor d<layers>c<channels> (d2c64, d4c128, d6c192) or an llm.c .bin checkpoint")
