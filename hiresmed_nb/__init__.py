"""hiresmed-nb: reproducible notebooks for training CNNs on high-resolution medical images.

Modules: ``params`` (run parameters and their checks), ``synthetic`` (the embedded dataset),
``data`` (layouts on disk and tf.data pipelines), ``models``, ``training`` (one function, serial or
per Horovod rank), ``cluster`` (Horovod ranks in ipyparallel engines), ``records`` (JSON results),
``magics`` (``%horovodrun``: any Horovod code from a cell; ``%load_ext hiresmed_nb``).
"""

__version__ = "0.1.0"


def load_ipython_extension(ipython) -> None:
    """``%load_ext hiresmed_nb``: registers ``%horovodrun`` and ``%%horovodrun``
    (:mod:`hiresmed_nb.magics`). Nothing heavy is imported until a magic runs."""
    from hiresmed_nb.magics import HorovodrunMagics

    ipython.register_magics(HorovodrunMagics)
