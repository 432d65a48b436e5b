"""llm.c's file formats (docs/design.md, "Formats fixed by others"): what llm.c reads and writes, in numpy.

  shards.py     token shards (256-int32 header, uint16 tokens): write, read, validate, ShardWriter
  tokenizer.py  GPT-2 BPE through tiktoken (offline rank file), batch encoding with EOT per document
  shapes.py     GPT-2 shapes by llm.c descriptor (d12 ... d48) and small CPU ones (d2c64 ...), parameter order
  evalfile.py   the HellaSwag eval file that `-h 1` reads: writer and validating reader

The model checkpoint (v3 fp32 / v5 bf16) is read and written by pipelines/model.py (torch tensors);
main.log is parsed by pipelines/runs/trainlog.py.
"""
