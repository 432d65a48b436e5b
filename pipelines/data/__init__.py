"""Where documents and benchmark items come from, and how documents are stored.

  documents.py   the document record in JSONL(.gz/.zst) / Parquet shards: readers, ShardedWriter,
                 DropLog (every dropped document counted, examples kept in removed/)
  pages.py       web pages from the hub (streamed) or local files, validated into documents;
                 the seeded held-out split; a mix's or classifier's path / hub source
  benchmarks.py  ARC-Easy, ARC-Challenge, HellaSwag, MMLU items (offline copy or hub), prompts, few-shot
  core_tasks.py  DCLM CORE task files (data/core, a local folder or a hub dataset), hash-checked
  executors.py   where a datatrove pipeline runs (local, Slurm, Ray): filter, and generate / annotate
                 with executor.kind=datatrove
"""
