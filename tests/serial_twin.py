"""The serial run of 01_train that several test modules inspect or compare with: trained once
per test run, in a notebook's kernel, by the session fixture ``serial_twin`` (conftest.py).

20 training images, batch 8: an epoch (3 steps, 24 images) crosses into the next pass, which
the exact-resume test needs (tests/test_resume.py). It reads the 128 px copy of the dataset
(tests/small_images.py)."""

from small_images import SMALL_SKIN

SERIAL_TWIN = {
    "MODE": "serial",
    "DATA_DIR": SMALL_SKIN,
    "IMAGE_SIZE": 32,
    "IMAGES_PER_CLASS": 5,
    "TEST_IMAGES_PER_CLASS": 4,
    "BATCH_SIZE": 8,
    "EPOCHS": 4,
}
