"""Run parameters: defaults, checks with one clear error each, and the run id."""

import pytest

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import PARAMETERS, run_id, validate


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
        ({"N_RANKS": -1, "MODE": "distributed"}, "N_RANKS"),
        ({"HOSTS": "hostA:0", "MODE": "distributed"}, "HOSTS"),
        ({"HOSTS": "hostA:two", "MODE": "distributed"}, "HOSTS"),
        ({"HOSTS": "hostA:1,hostA:2", "MODE": "distributed"}, "HOSTS"),
        ({"HOSTS": "a:2,b:2", "N_RANKS": 3, "MODE": "distributed"}, "N_RANKS"),
        ({"HOSTS": "a:1", "IPP_LAUNCHER": "slurm", "MODE": "distributed"}, "HOSTS"),
        ({"HOSTS": "a:1", "IPP_CLUSTER_FILE": "c.json", "MODE": "distributed"}, "HOSTS"),
        ({"IPP_CLUSTER_FILE": "/nonexistent/c.json", "MODE": "distributed"}, "IPP_CLUSTER_FILE"),
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


def test_n_ranks_zero_means_the_slots_of_hosts_or_two_on_this_machine():
    assert validate({"MODE": "distributed"})["N_RANKS"] == 2
    assert validate({"MODE": "distributed", "N_RANKS": 3})["N_RANKS"] == 3
    hosts = validate({"MODE": "distributed", "HOSTS": "hostA:2, hostB"})
    assert hosts["N_RANKS"] == 3
    assert (
        validate({"MODE": "distributed", "HOSTS": "hostA:2,hostB:2", "N_RANKS": 4})["N_RANKS"] == 4
    )
    assert validate({"MODE": "serial", "HOSTS": "hostA:2"})["N_RANKS"] == 1


def test_n_ranks_zero_with_a_cluster_file_means_its_engines(tmp_path):
    import json

    cluster_file = tmp_path / "cluster.json"
    sets = {"1": {"engines": {"0": {}, "1": {}, "2": {}}}}
    cluster_file.write_text(json.dumps({"cluster": {}, "engines": {"sets": sets}}))
    params = {"MODE": "distributed", "IPP_CLUSTER_FILE": str(cluster_file)}
    assert validate(params)["N_RANKS"] == 3
    assert validate({**params, "N_RANKS": 2})["N_RANKS"] == 2
    with pytest.raises(HiresmedError, match="N_RANKS=4 but IPP_CLUSTER_FILE"):
        validate({**params, "N_RANKS": 4})
    cluster_file.write_text("[]")
    with pytest.raises(HiresmedError, match="not an ipyparallel cluster file"):
        validate(params)
