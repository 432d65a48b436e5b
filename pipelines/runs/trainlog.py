"""llm.c's logs as tables: main.log (one row per step) and stdout step lines (the progress bar).

main.log lines (llmc/logger.h): `s:<step> trl:<train loss> lr:<lr> norm:<grad norm>`,
`s:<step> tel:<val loss>`, `s:<step> eval:<HellaSwag acc>`. A resumed run appends to the same file
and repeats the steps after its checkpoint: the last value written for a step wins. A line cut off
by a kill is skipped.

Step numbers are llm.c's 0-based optimizer steps: `trl` at step s is the loss of the batch that
step s trains on; `tel`/`eval` at step s are measured before that step (s = 0: the initial model,
s = steps: the final one). `tokens` = s * tokens per step = tokens trained on before step s.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from pipelines.errors import StudyError

_LOG = re.compile(r"^s:(\d+) (trl|tel|eval):(\S+)(?: lr:(\S+) norm:(\S+))?\s*$")
# train_gpt2.cu: "step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f (%+.2fz)| lr %.2e | %.2f ms | %.1f%% bf16 MFU | %.0f tok/s"
_STEP = re.compile(
    r"step\s+(?P<step>\d+)/(?P<steps>\d+) \| loss (?P<loss>\S+) \((?P<zloss>\S+)z\)\s*\| norm (?P<norm>\S+) "
    r"\((?P<zgrad>\S+)z\)\s*\| lr (?P<lr>\S+) \| (?P<ms>\S+) ms \| (?P<mfu>\S+)% (?P<precision>\w+) MFU \| "
    r"(?P<tok_s>\S+) tok/s")
COLUMNS = ["step", "tokens", "train_loss", "val_loss", "hellaswag", "lr", "grad_norm"]
SCHEDULE_FILE = "schedule.json"  # written by the train stage in train/<schedule>/


def parse_step_line(line: str) -> dict | None:
    """A train_gpt2cu stdout step line -> {step, steps, loss, norm, lr, ms, mfu (%), tok_s}; else None.
    `step` here is llm.c's printed step + 1 (steps done so far)."""
    m = _STEP.search(line)
    if not m:
        return None
    d = m.groupdict()
    out = {k: float(d[k]) for k in ("loss", "norm", "lr", "ms", "mfu", "tok_s")}
    return {"step": int(d["step"]), "steps": int(d["steps"]), **out, "precision": d["precision"]}


def parse_main_log(text: str) -> dict[int, dict]:
    """{step: {train_loss, lr, grad_norm, val_loss, hellaswag}}; later lines overwrite earlier ones."""
    rows: dict[int, dict] = {}
    for line in text.splitlines():
        m = _LOG.match(line)
        if not m:
            continue
        step, kind, value, lr, norm = m.groups()
        try:
            row = rows.setdefault(int(step), {})
            if kind == "trl":
                if lr is None or norm is None:
                    continue
                row.update(train_loss=float(value), lr=float(lr), grad_norm=float(norm))
            elif kind == "tel":
                row["val_loss"] = float(value)
            else:
                row["hellaswag"] = float(value)
        except ValueError:  # a line cut off mid-number
            continue
    return rows


def tokens_per_step(run_dir: Path) -> int | None:
    """-d from the launch record the train stage writes next to main.log (launch.json)."""
    try:
        argv = json.loads((Path(run_dir) / "launch.json").read_text())["flags"]
    except (OSError, ValueError, KeyError):
        return None
    flags = dict(zip(argv[::2], argv[1::2]))
    return int(flags["-d"]) if "-d" in flags else None


def read_log(path: str | Path, tokens_per_step_: int | None = None) -> pd.DataFrame:
    """main.log (or the folder holding it) -> one row per step, columns COLUMNS, sorted by step.
    A schedule's folder (schedule.json): its stages' logs end to end, steps and tokens counted across
    the whole run, plus a `stage` column; the boundary step appears twice (stage k's final val loss,
    stage k+1's initial one: the same weights)."""
    path = Path(path)
    if path.is_dir() and (path / SCHEDULE_FILE).exists():
        return read_schedule_log(path)
    if path.is_dir():
        path = path / "main.log"
    tps = tokens_per_step_ if tokens_per_step_ is not None else tokens_per_step(path.parent)
    rows = parse_main_log(path.read_text() if path.exists() else "")
    df = pd.DataFrame([{"step": s, **r} for s, r in sorted(rows.items())], columns=COLUMNS)
    df["tokens"] = df["step"] * tps if tps else pd.NA
    return df.astype({"step": "int64"})


def read_schedule(folder: str | Path) -> dict | None:
    try:
        return json.loads((Path(folder) / SCHEDULE_FILE).read_text())
    except (OSError, ValueError):
        return None


def read_schedule_log(folder: str | Path) -> pd.DataFrame:
    """train/<schedule>/: every stage's main.log shifted by the steps and tokens before it."""
    folder = Path(folder)
    sched = read_schedule(folder)
    if sched is None:
        raise StudyError(f"{folder / SCHEDULE_FILE} is missing or unreadable: rerun `study train`")
    frames = []
    for st in sched["stages"]:
        df = read_log(folder.parent / st["dir"], st["tokens_per_step"])
        df["step"] += st["start_step"]
        df["tokens"] = df["tokens"] + st["start_tokens"]
        df["stage"] = st["name"]
        frames.append(df)
    out = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else \
        pd.DataFrame(columns=[*COLUMNS, "stage"])
    return out.astype({"step": "int64"})


def summary(path: str | Path) -> dict:
    """The last step, losses and HellaSwag accuracy of one run folder (for run tables)."""
    df = read_log(path)
    last = lambda col: (df[col].dropna().iloc[-1] if df[col].notna().any() else None)  # noqa: E731
    train = df[df["train_loss"].notna()]
    as_float = lambda v: None if v is None else float(v)  # noqa: E731
    return {
        "steps_logged": int(train["step"].max() + 1) if len(train) else 0,
        "first_train_loss": float(train["train_loss"].iloc[0]) if len(train) else None,
        "last_train_loss": as_float(last("train_loss")),
        "last_val_loss": as_float(last("val_loss")),
        "hellaswag": as_float(last("hellaswag")),
    }


def run_dirs(train_dir: str | Path) -> dict[str, Path]:
    """{mix or schedule: folder} of the runs under results/<run>/train/ (a schedule: its folder
    holding schedule.json, read by read_log as one run)."""
    d = Path(train_dir)
    return {p.name: p for p in sorted(d.iterdir())
            if (p / "launch.json").exists() or (p / "main.log").exists() or (p / SCHEDULE_FILE).exists()} \
        if d.is_dir() else {}


def run_table(train_dir: str | Path) -> pd.DataFrame:
    """One row per mix, and per stage of a schedule: backend, planned steps, last checkpoint, losses,
    HellaSwag (done or in progress)."""
    rows = []
    for name, f, launch in llmc_folders(train_dir):
        flags = dict(zip(launch.get("flags", [])[::2], launch.get("flags", [])[1::2]))
        done = [int(p.name[5:]) for p in f.glob("DONE_*") if p.name[5:].isdigit()]
        rows.append({"mix": name, "backend": launch.get("backend"), "model": flags.get("-e"),
                     "steps": int(flags["-x"]) if "-x" in flags else None,
                     "last_checkpoint": max(done, default=None), **summary(f)})
    return pd.DataFrame(rows)


def llmc_folders(train_dir: str | Path) -> list[tuple[str, Path, dict]]:
    """(mix or schedule/stage, llm.c output folder, its launch.json or {}) of every run under train/."""
    out = []
    for mix, d in run_dirs(train_dir).items():
        sched = read_schedule(d)
        folders = [(f"{mix}/{st['name']}", d.parent / st["dir"]) for st in sched["stages"]] if sched else [(mix, d)]
        for name, f in folders:
            try:
                launch = json.loads((f / "launch.json").read_text())
            except (OSError, ValueError):
                launch = {}
            out.append((name, f, launch))
    return out


def launch_commands(train_dir: str | Path) -> list[tuple[str, str, str]]:
    """(run or run/stage, working directory, command line) of every launched run, from launch.json."""
    import shlex

    return [(name, launch.get("cwd", ""), shlex.join(launch["command"]))
            for name, _, launch in llmc_folders(train_dir) if launch.get("command")]


def watch(train_dir: str | Path, seconds: float = 0, every: float = 10.0, x: str = "step") -> None:
    """Notebook display of the loss curves and run table, redrawn every `every` s for `seconds` s
    (0: once), while a run trains in another process (`study train` in a terminal, a Slurm job)."""
    import time

    import matplotlib.pyplot as plt
    from IPython.display import clear_output, display

    end = time.monotonic() + seconds
    while True:
        tables = {mix: read_log(d) for mix, d in run_dirs(train_dir).items()}
        clear_output(wait=True)
        if tables:
            plot_losses(tables, x=x)
            plt.show()
        display(run_table(train_dir))
        if time.monotonic() + every > end:
            return
        time.sleep(every)


def plot_losses(tables: dict[str, pd.DataFrame], ax=None, x: str = "step"):
    """Train (thin) and val (markers) loss of several runs on one matplotlib axis."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for name, df in tables.items():
        tr = df[df["train_loss"].notna()]
        line, = ax.plot(tr[x], tr["train_loss"], lw=1, alpha=0.7, label=f"{name} train")
        va = df[df["val_loss"].notna()]
        ax.plot(va[x], va["val_loss"], "o-", color=line.get_color(), label=f"{name} val")
    ax.set_xlabel(x)
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax
