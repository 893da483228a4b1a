"""hiresmed-nb: reproducible notebooks for training CNNs on high-resolution medical images.

Modules: ``params`` (run parameters and their checks), ``synthetic`` (the embedded dataset),
``data`` (layouts on disk and tf.data pipelines), ``models``, ``training`` (one function, serial or
per Horovod rank), ``cluster`` (Horovod ranks in ipyparallel engines), ``records`` (JSON results).
"""

__version__ = "0.1.0"
