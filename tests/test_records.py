"""Record helpers: the data-locality verdict, versions, the glued record."""

from hiresmed_nb import records


def rank(number, shard, opened):
    return {"rank": number, "train_files": shard, "opened_files": opened}


def test_data_locality_passes_only_when_each_rank_opened_its_own_shard():
    good = [rank(0, ["a", "b"], ["a", "b"]), rank(1, ["c"], ["c"])]
    assert records.data_locality(good, n_train=3)["ok"]
    peeked = [rank(0, ["a", "b"], ["a", "b", "c"]), rank(1, ["c"], ["c"])]
    verdict = records.data_locality(peeked, n_train=3)
    assert not verdict["ok"] and not verdict["each_rank_opened_only_its_shard"]
    assert verdict["images_opened_per_rank"] == [3, 1]


def test_data_locality_fails_for_overlapping_or_incomplete_shards():
    overlapping = [rank(0, ["a", "b"], ["a"]), rank(1, ["b", "c"], ["c"])]
    assert not records.data_locality(overlapping, n_train=3)["shards_disjoint"]
    incomplete = [rank(0, ["a"], ["a"]), rank(1, ["b"], ["b"])]
    verdict = records.data_locality(incomplete, n_train=3)
    assert not verdict["shards_cover_training_set"] and not verdict["ok"]


def test_versions_name_the_stack():
    found = records.versions()
    assert found["tensorflow"] == "2.15.1" and found["horovod"] == "0.28.1"
    assert found["python"].startswith("3.11")
    assert {"ipyparallel", "papermill", "hiresmed_nb"} <= set(found)
