"""Model builders at tiny sizes, and the weights checks (no download ever happens here)."""

import numpy as np
import pytest

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.science import epochs, models


# ImageNet-size networks take seconds each to build: `trains`, out of `make test-fast`.
@pytest.mark.parametrize(
    "arch",
    [
        "compact",
        "VGG16",
        pytest.param("ResNet50", marks=pytest.mark.trains),
        pytest.param("DenseNet169", marks=pytest.mark.trains),
    ],
)
def test_each_architecture_builds_with_a_new_head(arch):
    model = models.build_model(arch, 32, num_classes=3, weights=None, seed=0)
    assert model.output_shape == (None, 3)
    probabilities = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert epochs.random_layers(model) == []  # nothing drawn per step: a resume repeats it


def test_same_seed_gives_the_same_initial_weights():
    first = models.build_model("compact", 32, 4, None, seed=3).get_weights()
    again = models.build_model("compact", 32, 4, None, seed=3).get_weights()
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_missing_imagenet_file_names_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*_args, **_kwargs):
        raise OSError("no network")

    with pytest.raises(HiresmedError) as raised:
        models.imagenet_weights_file("ResNet50", download=offline)
    message = str(raised.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "models") in message and "\n" not in message


def test_weights_checks_fail_early(tmp_path):
    with pytest.raises(HiresmedError, match="WEIGHTS file"):
        models.check_weights(str(tmp_path / "absent.h5"), "VGG16")
    with pytest.raises(HiresmedError, match="compact"):
        models.check_weights("imagenet", "compact")
    models.check_weights(None, "VGG16")


def test_weights_path_is_loaded(tmp_path):
    saved = models.build_model("compact", 32, 4, None, seed=1)
    path = tmp_path / "w.h5"
    saved.save_weights(str(path))
    loaded = models.build_model("compact", 32, 4, str(path), seed=2)
    for a, b in zip(saved.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_is_recalibrated_to_the_average_of_batch_statistics():
    import tensorflow as tf

    from hiresmed_nb.science.training import recalibrate_batch_norm

    inputs = tf.keras.Input((3,))
    layer = tf.keras.layers.BatchNormalization(momentum=0.99)
    model = tf.keras.Model(inputs, layer(inputs))
    batches = [np.full((4, 3), value, np.float32) + np.arange(4)[:, None] for value in (1, 5, 9)]
    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(4)
    dataset = dataset.map(lambda x: (x, tf.zeros(4)))
    assert recalibrate_batch_norm(model, dataset, steps=3) == 1
    np.testing.assert_allclose(layer.moving_mean.numpy(), [6.5] * 3, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), [1.25] * 3, rtol=1e-4)  # var(0..3)
    assert layer.momentum == 0.99
