"""The `figures` stage: paper figures and LaTeX tables from a run, exported into paper/.

  figures.py  the stage: which outputs a run's stages allow, drawn and written; export into paper/
  plots.py    one function per figure (plain tables in, a matplotlib Figure out)
  tables.py   booktabs LaTeX / CSV tables
"""
