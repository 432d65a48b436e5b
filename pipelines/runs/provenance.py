"""Which data sets a stage read from outside the run (embedded, hub or a local path): recorded in its
manifest (`data`) and printed when it starts."""

from __future__ import annotations

from pipelines.config import StudyConfig
from pipelines.data.embedded import describe_benchmarks, describe_pages


def data_read(config: StudyConfig, stage: str) -> dict[str, dict]:
    """The data sets a stage reads from outside the run (embedded, hub or a local path), for its
    manifest and its first log line; stages it reads inside the run are its `inputs`."""
    out: dict[str, dict] = {}
    if stage == "ingest":
        c = config.ingest
        out["pages"] = describe_pages(c.path, c.dataset, c.dataset_config, c.split)
    elif stage == "classify" and not config.classifier.label_source.stage:
        s = config.classifier.label_source
        out["labels"] = describe_pages(s.path, s.dataset, s.dataset_config, s.split)
    elif stage == "mix":
        for name in config.mix.used_sources:
            s = config.mix.sources[name]
            if not s.stage:
                out[f"source {name}"] = describe_pages(s.path, s.dataset, s.dataset_config, s.split)
        if config.mix.decontaminate.enabled:
            out["benchmarks"] = describe_benchmarks(config.mix.decontaminate.eval_dir)
    elif stage == "train" and config.train.hellaswag:
        out["hellaswag"] = describe_benchmarks(config.train.hellaswag_path)
    elif stage == "evaluate":
        out["benchmarks"] = describe_benchmarks(config.evaluate.data_dir)
    return out



def data_line(desc: dict) -> str:
    if desc["kind"] == "hub":
        return "hub " + "/".join(str(desc[k]) for k in ("dataset", "config") if desc.get(k)) if desc.get("dataset") else "hub"
    return f"{desc['kind']} {desc['path']}"
