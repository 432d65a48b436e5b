"""Training: llm.c (`train_gpt2cu`) as a subprocess, or the PyTorch reference trainer on CPU.

Both backends take the same llm.c flag list and write the same `-o` directory (docs/design.md,
"Formats fixed by others"):

  flags.py      config `train` section -> llm.c flag list; llm.c's own flag parser (for the torch backend)
  data.py       llm.c's DataLoader (shards, Mersenne-Twister shuffle)
  optim.py      AdamW, gradient clipping, lr schedules and outlier z-scores, as llm.c does them
  reference.py  the torch backend: `python -m pipelines.train.reference <llm.c flags>`
  launcher.py   finds train_gpt2cu, builds mpirun / srun commands, streams progress, resumes
  train.py      the `train` stage: one llm.c run per mix (train/<mix>/) and a chain of runs per staged
                schedule (train/<schedule>/<stage>/, each from the previous stage's last checkpoint);
                `study train --dry-run` prints their command lines

The model itself (GPT-2, llm.c checkpoints, Hugging Face export) is pipelines/model.py; the llm.c
formats (shards, shapes, the HellaSwag file) are pipelines/llmc/; main.log tables pipelines/runs/trainlog.py.
"""
