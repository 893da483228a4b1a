"""The science: datasets, models, the training function, records, checkpoints and the report.

Nothing here starts or talks to a process: no ipyparallel, no cluster, no study runner (the
import contracts in ``pyproject.toml`` enforce it). The same :func:`training.train` runs in a
notebook's kernel or on every Horovod rank; where it runs is the launching layer's business
(:mod:`hiresmed_nb.cluster`), and which runs make a study is :mod:`hiresmed_nb.study`'s.
"""
