"""GPT-2 in PyTorch: llm.c's shapes and initialisation, checkpoint files (v3/v5), Hugging Face export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.errors import StudyError
from pipelines.llmc.shapes import GPT2Shape, is_llmc_descriptor, parse_descriptor
from pipelines.model import (
    GPT2,
    HEADER_BYTES,
    export_hf,
    load_checkpoint,
    read_checkpoint,
    read_checkpoint_header,
    write_checkpoint,
)
from pipelines.train.data import MT19937


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2 shared cores: OpenMP waits badly on busy cores
    yield
    torch.set_num_threads(n)


def test_descriptors_match_llmc_parameter_counts():
    # train_gpt2cu prints these num_parameters (padded vocab 50304 included)
    assert parse_descriptor("d12").num_parameters == 124_475_904
    assert parse_descriptor("gpt2:d12") == parse_descriptor("d12")
    assert parse_descriptor("d48").num_parameters == 1_557_686_400
    assert (parse_descriptor("d24").channels, parse_descriptor("d36").num_heads) == (1024, 20)
    assert parse_descriptor("d4c128") == GPT2Shape(4, 128, 4)
    assert is_llmc_descriptor("d48") and not is_llmc_descriptor("d4c128") and not is_llmc_descriptor("d13")
    with pytest.raises(StudyError, match="d<layers>c<channels>"):
        parse_descriptor("d13")
    with pytest.raises(StudyError, match="multiple of 32"):
        parse_descriptor("d2c48")


def test_mersenne_twister_is_llmc_and_torch_generator():
    # llmc/rand.h: "manual_seed(&state, 137); randint32(&state)" x5 prints these
    rng = MT19937(137)
    assert [rng.randint32() for _ in range(5)] == [4053805790, 2173880614, 380293709, 1237255315, 2986595568]


def _llmc_normal(n: int, std: float, rng: MT19937) -> np.ndarray:
    """llm.c's normal_ (rand.h, the numel >= 16 path) in float32."""
    d = np.array([(rng.randint32() & 0xFFFFFF) / float(1 << 24) for _ in range(n)], dtype=np.float32)

    def fill16(a: np.ndarray) -> None:
        u1, u2 = np.float32(1) - a[:8], a[8:16].copy()
        r = np.sqrt(np.float32(-2) * np.log(u1 + np.float32(1e-12)))
        th = (2.0 * math.pi * u2.astype(np.float64)).astype(np.float32)
        a[:8], a[8:16] = r * np.cos(th) * np.float32(std), r * np.sin(th) * np.float32(std)

    for i in range(0, n - 15, 16):
        fill16(d[i : i + 16])
    if n % 16:
        tail = d[n - 16 :]
        tail[:] = [(rng.randint32() & 0xFFFFFF) / float(1 << 24) for _ in range(16)]
        fill16(tail)
    return d


def test_init_reproduces_llmc_descriptor_init():
    """gpt_build_from_descriptor: one generator seeded 42, wte (V rows) then wpe, then per layer
    qkvw, attprojw, fcw, fcprojw; residual projections at 0.02/sqrt(2L); padding rows zero."""
    shape = GPT2Shape(num_layers=2, channels=32, num_heads=1, max_seq_len=8, vocab_size=37, padded_vocab_size=64)
    model = GPT2(shape, seed=42)
    rng, L, C = MT19937(42), 2, 32
    expect = {"wte": _llmc_normal(37 * C, 0.02, rng), "wpe": _llmc_normal(8 * C, 0.02, rng)}
    for layer in range(L):
        for name, n, std in (("qkv", 3 * C * C, 0.02), ("attproj", C * C, 0.02 / math.sqrt(2 * L)),
                             ("fc", 4 * C * C, 0.02), ("fcproj", 4 * C * C, 0.02 / math.sqrt(2 * L))):
            expect[f"{name}{layer}"] = _llmc_normal(n, std, rng)
    got = model.llmc_tensors()
    np.testing.assert_allclose(got["wte"][:37].reshape(-1).numpy(), expect["wte"], atol=1e-7)
    assert torch.count_nonzero(got["wte"][37:]) == 0
    np.testing.assert_allclose(got["wpe"].reshape(-1).numpy(), expect["wpe"], atol=1e-7)
    for layer in range(L):
        np.testing.assert_allclose(got["qkvw"][layer].reshape(-1).numpy(), expect[f"qkv{layer}"], atol=1e-7)
        np.testing.assert_allclose(got["fcprojw"][layer].reshape(-1).numpy(), expect[f"fcproj{layer}"], atol=1e-7)
    assert torch.all(got["ln1w"] == 1) and torch.all(got["qkvb"] == 0) and torch.all(got["lnfb"] == 0)
    assert not torch.equal(GPT2(shape, seed=1).wte.weight, model.wte.weight)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = GPT2(parse_descriptor("d2c64"), seed=7)
    with torch.no_grad():  # make biases and LayerNorms non-trivial so a mix-up would show
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    idx = torch.randint(0, 50257, (2, 24))
    return model, idx


def test_checkpoint_v3_roundtrip_identical_logits(small, tmp_path):
    model, idx = small
    path = write_checkpoint(model, tmp_path / "model_00000000.bin", dtype="fp32")
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:8].tolist() == [20240326, 3, 1024, 50257, 2, 2, 64, 50304]
    assert path.stat().st_size == HEADER_BYTES + 4 * model.shape.num_parameters
    loaded = load_checkpoint(path)
    assert torch.equal(loaded(idx), model(idx))
    _, version, tensors = read_checkpoint(path)
    assert version == 3 and tuple(tensors["fcprojw"].shape) == (2, 64, 256)
    assert torch.equal(tensors["attprojb"][1], model.h[1].attproj.bias.detach())


def test_checkpoint_v5_bf16_roundtrip(small, tmp_path):
    model, idx = small
    path = write_checkpoint(model, tmp_path / "m.bin", dtype="bf16")
    shape, version = read_checkpoint_header(path)
    assert version == 5 and path.stat().st_size == HEADER_BYTES + 2 * shape.num_parameters
    loaded = load_checkpoint(path)
    # weights are exactly the bf16 roundings, logits within bf16 tolerance
    assert torch.equal(loaded.h[0].fc.weight, model.h[0].fc.weight.detach().bfloat16().float())
    a, b = model(idx), loaded(idx)
    assert (a - b).abs().max() < 0.05 and not torch.equal(a, b)


def test_checkpoint_checks_say_what_is_wrong(small, tmp_path):
    model, _ = small
    path = write_checkpoint(model, tmp_path / "m.bin")
    raw = path.read_bytes()
    (tmp_path / "short.bin").write_bytes(raw[:-10])
    with pytest.raises(StudyError, match="truncated or corrupt"):
        read_checkpoint_header(tmp_path / "short.bin")
    (tmp_path / "magic.bin").write_bytes(np.array([20240520], "<i4").tobytes() + raw[4:])
    with pytest.raises(StudyError, match="not an llm.c model checkpoint"):
        read_checkpoint_header(tmp_path / "magic.bin")


def test_hf_export_loads_in_transformers_with_same_logits(small, tmp_path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from pipelines.llmc.tokenizer import gpt2

    model, idx = small
    ckpt = write_checkpoint(model, tmp_path / "model_00000010.bin")
    out = export_hf(ckpt, tmp_path / "hf", log=lambda _: None)
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"} <= \
        {p.name for p in out.iterdir()}
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), atol=1e-4, rtol=1e-4)
    tok = AutoTokenizer.from_pretrained(out)
    text = "The quick brown fox's 3 jumps—naïve café, 12345 tokens!\n\n  indented <|endoftext|> done"
    assert tok(text)["input_ids"] == gpt2().encode(text, allowed_special="all")
