"""Run parameters: defaults, checks with one clear error each, and the run id."""

import pytest

from hiresmed_nb.params import PARAMETERS, HiresmedError, run_id, validate


def test_defaults_validate_and_serial_runs_use_one_rank():
    checked = validate({"MODE": "serial", "N_RANKS": 4})
    assert checked["N_RANKS"] == 1
    assert set(checked) == set(PARAMETERS)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"DATASET": "mnist"}, "DATASET"),
        ({"ARCH": "resnet50"}, "ARCH"),
        ({"MODE": "parallel"}, "MODE"),
        ({"IMAGE_SIZE": 31}, "IMAGE_SIZE"),
        ({"N_RANKS": 0, "MODE": "distributed"}, "N_RANKS"),
        ({"BATCH_SIZE": 0}, "BATCH_SIZE"),
        ({"EPOCHS": 0}, "EPOCHS"),
        ({"LEARNING_RATE": 0.0}, "LEARNING_RATE"),
        ({"IMAGE_SIZE": "64"}, "IMAGE_SIZE"),
        ({"EPOCHS": True}, "EPOCHS"),
        ({"LR_SCALING": "sqrt"}, "LR_SCALING"),
    ],
)
def test_each_bad_value_gets_one_error_naming_the_parameter(overrides, named):
    with pytest.raises(HiresmedError, match=named):
        validate(overrides)


def test_unknown_parameter_suggests_the_nearest_name():
    with pytest.raises(HiresmedError, match="did you mean IMAGE_SIZE"):
        validate({"IMAGE_SIZ": 64})


def test_arch_typo_suggests_the_right_spelling():
    with pytest.raises(HiresmedError, match="did you mean ResNet50"):
        validate({"ARCH": "Resnet50"})


def test_weights_none_string_means_random_initialisation():
    assert validate({"WEIGHTS": "None"})["WEIGHTS"] is None


def test_run_id_spells_dataset_arch_size_images_mode_ranks_and_seed():
    params = validate(
        {"IMAGE_SIZE": 128, "IMAGES_PER_CLASS": 30, "MODE": "distributed", "N_RANKS": 4, "SEED": 2}
    )
    assert run_id(params) == "synthetic-skin_compact_128px_30ipc_distributed4_seed2"
    assert run_id(validate({"N_RANKS": 4})).endswith("_serial1_seed0")
