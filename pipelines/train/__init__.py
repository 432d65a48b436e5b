"""Training: llm.c (`train_gpt2cu`) as a subprocess, or the PyTorch reference trainer on CPU.

Both backends take the same llm.c flag list and write the same `-o` directory (DESIGN.md):

  shapes.py     GPT-2 shapes by llm.c descriptor (d12 ... d48) and small CPU ones (d2c64 ...)
  flags.py      config `train` section -> llm.c flag list; llm.c's own flag parser (for the torch backend)
  data.py       llm.c's DataLoader (shards, Mersenne-Twister shuffle) and HellaSwag EvalLoader
  hellaswag.py  the HellaSwag eval file that `-h 1` reads, in llm.c's format
  optim.py      AdamW, gradient clipping, lr schedules and outlier z-scores, as llm.c does them
  reference.py  the torch backend: `python -m pipelines.train.reference <llm.c flags>`
  launcher.py   finds train_gpt2cu, builds mpirun / srun commands, streams progress, resumes
  trainlog.py   main.log and stdout step lines -> a tidy table (a schedule's stages end to end); loss curves
  stage.py      the `train` stage: one llm.c run per mix (train/<mix>/) and a chain of runs per staged
                schedule (train/<schedule>/<stage>/, each from the previous stage's last checkpoint);
                `study train --dry-run` prints their command lines

The model itself (GPT-2, llm.c checkpoints, Hugging Face export) is pipelines/model.py.
"""
