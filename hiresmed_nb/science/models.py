"""Model builders: Keras applications with a new head, and a compact CNN for quick CPU runs.

Every builder takes images as float32 in [0, 255] after :func:`preprocessing_for`, which applies
the architecture's own ``preprocess_input``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hiresmed_nb.errors import HiresmedError

if TYPE_CHECKING:
    import tensorflow as tf

# Keras' file names for the ImageNet weights without the top, in ~/.keras/models.
IMAGENET_FILES = {
    "VGG16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "ResNet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "DenseNet169": "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
_WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications"
_WEIGHTS_SUBDIR = {"VGG16": "vgg16", "ResNet50": "resnet", "DenseNet169": "densenet"}


def keras_models_dir() -> Path:
    """The folder where Keras keeps downloaded weights (``$KERAS_HOME/models``)."""
    import os

    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


def preprocessing_for(arch: str) -> Callable:
    """The architecture's own input scaling, for images in [0, 255]."""
    import tensorflow as tf

    if arch == "compact":
        return lambda images: images / 255.0
    module = {
        "VGG16": tf.keras.applications.vgg16,
        "ResNet50": tf.keras.applications.resnet50,
        "DenseNet169": tf.keras.applications.densenet,
    }[arch]
    return module.preprocess_input


def imagenet_weights_file(arch: str, download: Callable | None = None) -> Path:
    """Path to ``arch``'s ImageNet file, fetching it through Keras if absent.

    Raises a one-line :class:`HiresmedError` naming the file and folder when it is absent and
    cannot be downloaded (``download`` is ``tf.keras.utils.get_file`` unless given).
    """
    if arch not in IMAGENET_FILES:
        raise HiresmedError(f"WEIGHTS='imagenet' has no ImageNet weights for ARCH={arch!r}")
    name = IMAGENET_FILES[arch]
    local = keras_models_dir() / name
    if local.exists():
        return local
    if download is None:
        import tensorflow as tf

        download = tf.keras.utils.get_file
    try:
        return Path(
            download(
                name, f"{_WEIGHTS_BASE_URL}/{_WEIGHTS_SUBDIR[arch]}/{name}", cache_subdir="models"
            )
        )
    except Exception as error:  # any network or file failure means the same to the user
        raise HiresmedError(
            f"WEIGHTS='imagenet': {name} is not in {keras_models_dir()} and could not be "
            f"downloaded ({type(error).__name__}); put the file there or set WEIGHTS to its path"
        ) from None


def check_weights(weights: str | None, arch: str) -> None:
    """Fail early when ``WEIGHTS`` cannot be honoured (before any data or cluster work)."""
    if weights is None:
        return
    if weights == "imagenet":
        if arch == "compact":
            raise HiresmedError("WEIGHTS='imagenet' has no ImageNet weights for ARCH='compact'")
        return
    if not Path(weights).expanduser().is_file():
        raise HiresmedError(f"WEIGHTS file {weights} does not exist")


def compact_cnn(image_size: int, num_classes: int, seed: int) -> tf.keras.Model:
    """Four conv blocks with batch norm and global pooling: ~100 k parameters, quick on a CPU.

    The softmax head computes in float32 whatever the mixed-precision policy.
    """
    import tensorflow as tf

    layers = tf.keras.layers
    init = tf.keras.initializers.GlorotUniform(seed=seed)
    inputs = tf.keras.Input((image_size, image_size, 3))
    x = inputs
    for filters in (16, 32, 64, 96):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=init)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(
        num_classes, activation="softmax", kernel_initializer=init, dtype="float32"
    )(x)
    return tf.keras.Model(inputs, outputs, name="compact")


def build_model(
    arch: str, image_size: int, num_classes: int, weights: str | None, seed: int
) -> tf.keras.Model:
    """Build ``arch`` for square RGB inputs with a ``num_classes`` softmax head.

    ``weights``: None (random), ``"imagenet"`` (backbone only) or a path to a full-model
    weights file saved by Keras.
    """
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    if arch == "compact":
        model = compact_cnn(image_size, num_classes, seed)
    else:
        application = getattr(tf.keras.applications, arch)
        backbone_weights = str(imagenet_weights_file(arch)) if weights == "imagenet" else None
        backbone = application(
            include_top=False,
            weights=backbone_weights,
            pooling="avg",
            input_shape=(image_size, image_size, 3),
        )
        # float32 softmax: stable under mixed precision.
        head = tf.keras.layers.Dense(num_classes, activation="softmax", dtype="float32")
        outputs = head(backbone.output)
        model = tf.keras.Model(backbone.input, outputs, name=arch)
    if weights not in (None, "imagenet"):
        model.load_weights(str(Path(weights).expanduser()))
    return model
