
import pytest

from pipelines.config import StudyConfig, list_presets, load_config
from pipelines.errors import StudyError
from pipelines.runs.manifest import Run

PRESETS = ["ci", "smoke", "cpu", "gpu-124m", "gpu-1.5b"]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_names_itself(name):
    cfg = load_config(name)
    assert isinstance(cfg, StudyConfig)
    assert cfg.preset == name
    assert set(PRESETS) <= set(list_presets())


def test_unknown_key_in_file_names_file_key_and_allowed(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("ingest:\n  max_docs: 10\n")
    with pytest.raises(StudyError) as e:
        load_config(str(p))
    msg = str(e.value)
    assert str(p) in msg
    assert "ingest.max_docs" in msg
    assert "max_documents" in msg  # what is allowed


def test_unknown_section_is_rejected(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("ingset:\n  path: x\n")
    with pytest.raises(StudyError, match="unknown key `ingset`.*ingest"):
        load_config(str(p))


def test_mistyped_value_names_key_and_expectation(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("ingest:\n  max_documents: lots\n  sample: shuffled\n")
    with pytest.raises(StudyError) as e:
        load_config(str(p))
    msg = str(e.value)
    assert "ingest.max_documents" in msg and "integer" in msg
    assert "ingest.sample" in msg and "'first' or 'random'" in msg


def test_overrides_are_typed_and_strict():
    cfg = load_config("ci", ["ingest.max_documents=17", "ingest.exclude_sources=[a, b]", "ingest.path=null"])
    assert cfg.ingest.max_documents == 17
    assert cfg.ingest.exclude_sources == ["a", "b"]
    assert cfg.ingest.path is None
    with pytest.raises(StudyError, match="unknown key `ingest.max_docs`.*max_documents"):
        load_config("ci", ["ingest.max_docs=3"])
    with pytest.raises(StudyError, match="ingest.max_documents"):
        load_config("ci", ["ingest.max_documents=-1"])
    with pytest.raises(StudyError, match="is a value, not a section"):
        load_config("ci", ["seed.x=1"])
    with pytest.raises(StudyError, match="expected section.key=value"):
        load_config("ci", ["ingest.max_documents"])


def test_extends_merges_sections():
    smoke, cpu = load_config("smoke"), load_config("cpu")
    assert cpu.ingest.max_documents != smoke.ingest.max_documents
    assert cpu.ingest.dataset == smoke.ingest.dataset  # inherited
    assert cpu.tokenize == smoke.tokenize


def test_unknown_preset_lists_presets():
    with pytest.raises(StudyError, match="unknown preset 'nope'.*smoke"):
        load_config("nope")


def test_derived_values():
    cfg = load_config("ci", ["ingest.max_documents=200", "ingest.val_fraction=0.1", "tokenize.workers=3"])
    d = cfg.derived()
    assert d["ingest.expected_val_documents"] == 20
    assert d["tokenize.workers"] == 3


def test_hash_ignores_speed_only_fields_but_not_outputs(tmp_path):
    base = Run(load_config("ci"), "r")
    assert Run(load_config("ci", ["tokenize.workers=7"]), "r").stage_hash("tokenize") == base.stage_hash("tokenize")
    assert Run(load_config("ci", ["tokenize.shard_tokens=5000"]), "r").stage_hash("tokenize") != base.stage_hash("tokenize")
    assert Run(load_config("ci", ["seed=1"]), "r").stage_hash("ingest") != base.stage_hash("ingest")


def test_typed_updates_equal_the_same_set_text_and_fail_the_same_way():
    from pipelines.config import updates_of, with_updates

    mixes = [{"name": "m", "tokens": 5000, "weights": {"web": 1.0}}]
    text = load_config("ci", ["train.steps=3", "mix.mixes=[{name: m, tokens: 5000, weights: {web: 1.0}}]",
                              "train.mixes=null", "train.schedules=[]"])
    for typed in (with_updates(load_config("ci"), {"train.steps": 3, "mix.mixes": mixes},
                               {"train": {"mixes": None, "schedules": []}}),
                  with_updates(load_config("ci"), updates_of(["train.steps=3", "train.mixes=null"]),
                               {"mix": {"mixes": mixes}, "train.schedules": []})):
        assert typed == text
        assert all(Run(typed, "r").stage_hash(s) == Run(text, "r").stage_hash(s) for s in ("mix", "train"))
    base = load_config("ci")
    assert with_updates(base) == base and with_updates(base, {"ingest": {}}) == base
    with pytest.raises(StudyError, match="unknown key `ingest.max_docs`.*max_documents"):
        with_updates(base, {"ingest": {"max_docs": 3}})
    with pytest.raises(StudyError, match="is a value, not a section"):
        with_updates(base, {"mix.sources.web.path": "x"})
    with pytest.raises(StudyError, match="ingest.max_documents"):
        with_updates(base, {"ingest.max_documents": -1})
    # one validation at the end: a mix named by train.mixes may arrive in a later update
    cfg = with_updates(base, {"train.mixes": ["m"], "train.schedules": []}, {"mix.mixes": mixes})
    assert cfg.train.mixes == ["m"]
