"""Record helpers: the data-locality verdict, versions, the glued record."""

from hiresmed_nb.science import records


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


def test_each_rank_entry_keeps_who_and_where_it_ran():
    from hiresmed_nb.params import validate

    params = validate({"MODE": "distributed", "N_RANKS": 2})
    head = {
        "accuracy": 0.5,
        "balanced_accuracy": 0.5,
        "macro_f1": 0.5,
        "per_class_auroc": {},
        "macro_auroc": None,
        "confusion_matrix": [],
        "class_names": ["a", "b"],
        "n_train": 2,
        "n_test": 2,
        "history": {},
        "resumed_from_epoch": 0,
        "skipped": {},
        "checked": {},
        "accumulation_steps": 1,
        "train_seconds": 1.0,
        "images_per_second": 2.0,
        "n_ranks": 2,
        "effective_batch_size": 16,
        "learning_rate": 1e-3,
    }
    results = [
        {
            "rank": number,
            "local_rank": number,
            "local_size": 2,
            "host": "nodeA",
            "hostname": "machine",
            "pid": 100 + number,
            "train_files": [name],
            "opened_files": [name],
            "weights_digest": "d",
            "junk": "not kept",
        }
        for number, name in enumerate(["x", "y"])
    ]
    results[0].update(head)
    results[1]["slot"] = {"engine": 3, "key": "localhost/1", "gpu": None, "threads": 1}
    record = records.build_record(params, results, records.now_iso())
    assert [entry["slot"] for entry in record["ranks"]] == [None, results[1]["slot"]]
    # Milliseconds: runs packed side by side are compared by these times.
    assert len(record["started_at"].split(".")[1]) == len("123+00:00")
    assert [entry["pid"] for entry in record["ranks"]] == [100, 101]
    assert [entry["local_rank"] for entry in record["ranks"]] == [0, 1]
    for entry in record["ranks"]:
        assert set(entry) == set(records.RANK_KEYS)
        assert (entry["host"], entry["hostname"], entry["local_size"]) == ("nodeA", "machine", 2)
    assert record["data_locality"]["ok"]
