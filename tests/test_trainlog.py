"""llm.c logs -> tables: main.log with a restart (the last value for a step wins), stdout step lines."""

from __future__ import annotations

import json

import pytest

from pipelines.runs.trainlog import COLUMNS, parse_step_line, read_log, summary

LOG_WITH_RESTART = """\
s:0 tel:10.9900
s:0 trl:10.9500 lr:0.000100 norm:5.10
s:1 trl:10.5000 lr:0.000200 norm:3.20
s:2 trl:10.1000 lr:0.000300 norm:2.00
s:3 trl:9.8000 lr:0.000400 norm:1.50
s:4 tel:9.7000
s:4 eval:0.2500
s:4 trl:9.6000 lr:0.000500 norm:1.40
s:5 trl:9.5000 lr:0.000500 norm:1.30
s:6 trl:9.40
s:4 tel:9.7100
s:4 trl:9.6100 lr:0.000500 norm:1.41
s:5 trl:9.5100 lr:0.000500 norm:1.31
s:6 trl:9.4100 lr:0.000500 norm:1.21
s:7 trl:9.3100 lr:0.000500 norm:1.11
s:8 tel:9.2000
s:8 eval:0.2600
s:8 tr"""  # a crash after step 5 (mid-line at step 6), a resume from the step-4 checkpoint, a kill mid-line


def test_log_with_restart_last_value_wins(tmp_path):
    (tmp_path / "main.log").write_text(LOG_WITH_RESTART)
    df = read_log(tmp_path, tokens_per_step_=1024)
    assert list(df.columns) == COLUMNS
    assert df["step"].tolist() == list(range(9))  # every step once, sorted
    row = df.set_index("step")
    assert row.loc[4, "train_loss"] == 9.61 and row.loc[4, "val_loss"] == 9.71 and row.loc[4, "hellaswag"] == 0.25
    assert row.loc[5, "grad_norm"] == 1.31 and row.loc[6, "train_loss"] == 9.41 and row.loc[6, "lr"] == 0.0005
    assert row.loc[0, "val_loss"] == 10.99 and row.loc[8, "hellaswag"] == 0.26
    assert row.loc[8, "train_loss"] != row.loc[8, "train_loss"]  # NaN: the final step only evaluates
    assert row.loc[8, "tokens"] == 8 * 1024 and row.loc[0, "tokens"] == 0
    s = summary(tmp_path)
    assert (s["steps_logged"], s["first_train_loss"], s["last_train_loss"], s["last_val_loss"], s["hellaswag"]) == \
        (8, 10.95, 9.31, 9.2, 0.26)


def test_tokens_come_from_launch_record(tmp_path):
    (tmp_path / "main.log").write_text("s:0 trl:10.0 lr:0.1 norm:1.0\ns:3 tel:9.0\n")
    (tmp_path / "launch.json").write_text(json.dumps({"flags": ["-b", "4", "-d", "512"]}))
    assert read_log(tmp_path / "main.log")["tokens"].tolist() == [0, 1536]
    assert read_log(tmp_path / "missing-folder").empty


@pytest.mark.parametrize("line, expected", [
    # train_gpt2cu's printf (the GPT-2 124M run of llm.c discussion #481)
    ("step    1/18865 | loss 11.011127 (+nanz)| norm 15.2734 (+nanz)| lr 8.57e-07 | 1409.39 ms | 8.3% bf16 MFU | "
     "372200 tok/s", {"step": 1, "steps": 18865, "loss": 11.011127, "norm": 15.2734, "lr": 8.57e-07, "ms": 1409.39,
                      "mfu": 8.3, "tok_s": 372200.0, "precision": "bf16"}),
    ("step 3201/32000 | loss 2.912345 (-0.41z)| norm 0.2563 (+1.20z)| lr 5.91e-04 | 2801.12 ms | 46.1% bf16 MFU | "
     "374350 tok/s", {"step": 3201, "steps": 32000, "loss": 2.912345, "norm": 0.2563, "lr": 5.91e-04, "ms": 2801.12,
                      "mfu": 46.1, "tok_s": 374350.0, "precision": "bf16"}),
    ("val loss 3.281234", None),
    ("HellaSwag: 2921/10042 = 0.290878", None),
])
def test_step_lines(line, expected):
    assert parse_step_line(line) == expected
