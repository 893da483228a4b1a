"""The embedded datasets at the size the tests' runs need: every 1024 px image of the SYNTHETIC
dataset reduced 8 times (the mean of each 8 x 8 block, PIL's ``Image.reduce``) to 128 px, in the
same layout with the same metadata. Runs that train at 32 px read these through ``DATA_DIR``:
each rank then decodes 128 px PNGs, not 1024 px ones (a 64th of the pixels).

Made once beside the project's data cache and kept there, like the datasets themselves: the
first process to ask makes it into a staging folder and renames that into place, under a lock.
"""

import shutil
import tempfile
from pathlib import Path

from PIL import Image
from sessions import exclusive

from hiresmed_nb.science import synthetic

REDUCTION = 8
SIZE = synthetic.NATIVE_SIZE // REDUCTION
_MARKER = "REDUCED.txt"


def small_dir(name: str) -> Path:
    """Where the reduced copy of the embedded dataset ``name`` lives (whether made yet or not)."""
    full = synthetic.default_data_dir(name)
    return full.parent / f"{name}-{SIZE}px"


SMALL_SKIN = str(small_dir("synthetic-skin"))


def ensure_small(name: str) -> Path:
    """The reduced copy of ``name``, made from the full dataset (generated first if missing)."""
    small = small_dir(name)
    if (small / _MARKER).exists():
        return small
    full = synthetic.ensure_dataset(name)
    with exclusive(small.parent / f".{small.name}.lock"):
        if not (small / _MARKER).exists():  # or another process made it while this one waited
            _reduce_into(full, small)
    return small


def _reduce_into(full: Path, small: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{small.name}-", dir=small.parent))
    try:
        for source in sorted(full.rglob("*")):
            target = staging / source.relative_to(full)
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif source.suffix == ".png":
                with Image.open(source) as image:
                    image.reduce(REDUCTION).save(target, compress_level=1)
            else:
                shutil.copyfile(source, target)
        (staging / _MARKER).write_text(
            f"{full.name} reduced {REDUCTION} times, to {SIZE} px, for the tests "
            "(tests/small_images.py)\n"
        )
        shutil.rmtree(small, ignore_errors=True)  # an incomplete copy: it has no marker
        staging.rename(small)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
