"""Per-task shim for multi-node llm.c under Slurm: `srun ... python -m pipelines.train.rank <cmd...>`.

llm.c's Slurm scripts pass each task its rank as `-pr $SLURM_PROCID` through `bash -c`; this
does the same without a shell: it appends `-pr <SLURM_PROCID>` to the command and execs it.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    cmd = sys.argv[1:]
    rank = os.environ.get("SLURM_PROCID")
    if not cmd or rank is None:
        sys.exit("usage (inside srun): python -m pipelines.train.rank train_gpt2cu <flags>; SLURM_PROCID must be set")
    os.execv(cmd[0], [*cmd, "-pr", rank])


if __name__ == "__main__":
    main()
