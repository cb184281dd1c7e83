"""Incremental nights (issue 25): a night reads only the new input files, users and items
keep their indices, and with the models reused only the users with new events are
scored, the others' rows carried over; the result equals a full scoring pass, user by
user.

Night 1 prepares the first day's file and trains; night 2 adds a file with new events
for 15 of the 300 users, three new users and an item no model has seen, and reuses
every model (``retrain: never``). Both nights pseudonymise the user ids, so the rows
carried over are found by pseudonym."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from interest import cli
from interest import schemas as S
from interest.data.prepare import CHANGED, PrepareConfig, prepare
from interest.data.privacy import pseudonyms
from interest.pipeline import warehouse as W
from interest.report.build import report_folder
from interest.score.batch import known_items, plan, score_users
from interest.config import from_dict

DAY1, DAY2 = "2026-11-30", "2026-12-01"
CHANGED_USERS, NEW_USERS = 15, 3
NEW_ITEM = "I-NEW-0001"
TABLES = ("user_next_actions", "user_tags", "user_recommendations", "user_zeroshot")
KEY = "a-test-key-of-enough-length"


def _split_days(synthetic: Path, to: Path) -> tuple[Path, Path, list[str]]:
    """(day 1's file, day 2's file, the old users day 2 has events of)."""
    events = pads.dataset(synthetic / "events").to_table().sort_by([(S.USER_ID, "ascending"), (S.TS, "ascending")])
    users = sorted(set(events.column(S.USER_ID).to_pylist()))
    movers = users[::len(users) // CHANGED_USERS][:CHANGED_USERS]
    late = events.filter(pc.is_in(events.column(S.USER_ID), value_set=pa.array(movers)))
    # Day 2: each mover's latest three events again, a day later (new events, same items),
    # one of them on an item no model has seen; and three new users.
    last = pa.concat_tables([late.filter(pc.equal(late.column(S.USER_ID), u)).slice(
        late.filter(pc.equal(late.column(S.USER_ID), u)).num_rows - 3) for u in movers])
    shifted = last.set_column(last.schema.get_field_index(S.TS), S.TS,
                              pc.add(last.column(S.TS), pa.scalar(86_400_000_000, pa.duration("us"))))
    ids = shifted.column(S.ITEM_ID).to_pylist()
    ids[0] = NEW_ITEM
    shifted = shifted.set_column(shifted.schema.get_field_index(S.ITEM_ID), S.ITEM_ID, pa.array(ids))
    newcomers = events.slice(0, 4 * NEW_USERS)
    newcomers = newcomers.set_column(0, S.USER_ID, pa.array([f"NEW{i // 4}" for i in range(4 * NEW_USERS)]))
    day2 = pa.concat_tables([shifted, newcomers.cast(shifted.schema)])
    to.mkdir(parents=True)
    pq.write_table(events, to / "d1.parquet")
    pq.write_table(day2, to / "d2.parquet")
    return to / "d1.parquet", to / "d2.parquet", movers


def test_an_incremental_preparation_equals_a_full_one(tmp_path, synthetic_small, ray_start_4_cpus):
    inputs = tmp_path / "in"
    d1, d2, movers = _split_days(synthetic_small, inputs / "all")
    (inputs / "all" / "d2.parquet").rename(tmp_path / "d2.parquet")

    def run(out: Path, incremental: bool) -> dict:
        return prepare(from_dict(PrepareConfig, {"input": str(inputs / "all"), "out": str(out),
                                                 "items": str(synthetic_small / "items.parquet"),
                                                 "incremental": incremental, "overwrite": True, "buckets": 4}))

    first = run(tmp_path / "p", True)
    assert first["update"]["mode"] == "full" and first["update"]["why"] == "no earlier preparation"
    users1 = pq.read_table(tmp_path / "p" / "vocab" / "users").to_pydict()
    items1 = pq.read_table(tmp_path / "p" / "vocab" / "items.parquet").column(S.ITEM_ID).to_pylist()
    shutil.move(tmp_path / "d2.parquet", inputs / "all" / "d2.parquet")
    second = run(tmp_path / "p", True)
    update = second["update"]
    assert update["mode"] == "incremental" and update["files_read"] == 1 and update["new_files"] == [str(d2)]
    assert update["changed_users"] == CHANGED_USERS + NEW_USERS and update["new_users"] == NEW_USERS
    assert update["previous"] == first["update"]["id"] != update["id"]  # the version it updates
    assert second["files"][str(d1)] == first["files"][str(d1)]  # read once, its accounting kept
    for counts in second["files"].values():
        assert counts["input"] == counts["kept"] + counts["quarantined"] + counts["duplicates_removed"] + \
            counts["forgotten"]
    # Indices only grow: every earlier user and item keeps its own.
    users2 = pq.read_table(tmp_path / "p" / "vocab" / "users").to_pydict()
    users2 = dict(zip(users2[S.USER_ID], users2[S.USER_IDX]))
    assert all(users2[u] == i for i, u in zip(users1[S.USER_IDX], users1[S.USER_ID]))
    assert sorted(users2.values()) == list(range(len(users2)))
    items2 = pq.read_table(tmp_path / "p" / "vocab" / "items.parquet").column(S.ITEM_ID).to_pylist()
    assert items2[:len(items1)] == items1 and items2[len(items1):] == [NEW_ITEM]
    changed = set(pq.read_table(tmp_path / "p" / CHANGED).column(S.USER_ID).to_pylist())
    assert changed == set(movers) | {f"NEW{i}" for i in range(NEW_USERS)}

    full = run(tmp_path / "full", False)
    assert full["total"] == second["total"] and full["users"] == second["users"]
    assert full["split"]["events"] == second["split"]["events"]
    keys = [(c, "ascending") for c in (S.USER_ID, S.TS, S.BEHAVIOR, S.ITEM_ID)]
    columns = [S.USER_ID, S.ITEM_ID, S.BEHAVIOR, S.TS, S.SPLIT]
    assert pq.read_table(tmp_path / "p" / "events", columns=columns).sort_by(keys).equals(
        pq.read_table(tmp_path / "full" / "events", columns=columns).sort_by(keys))

    # A file read before that changed: everything is read again, and the report says why.
    pq.write_table(pq.read_table(d1).slice(1), d1)
    third = run(tmp_path / "p", True)
    assert third["update"]["mode"] == "full" and "changed since it was read" in third["update"]["why"]
    assert third["update"]["previous"] is None


def test_known_items_drops_the_events_of_items_new_since_training():
    batch = {"items": np.array([np.array([1, 7, 2]), np.array([8, 9]), np.array([3])], dtype=object),
             "behaviors": np.array([np.array([0, 1, 2]), np.array([0, 0]), np.array([4])], dtype=object),
             "n_train": np.array([1, 1, 1], np.int32), "n_valid": np.array([1, 0, 0], np.int32),
             "n_test": np.array([1, 1, 0], np.int32)}
    out = known_items(batch, 5)
    assert [x.tolist() for x in out["items"]] == [[1, 2], [], [3]]
    assert [x.tolist() for x in out["behaviors"]] == [[0, 2], [], [4]]
    # user 0 lost its validation event, user 1 both of its events
    assert out["n_train"].tolist() == [1, 0, 1] and out["n_valid"].tolist() == [0, 0, 0]
    assert out["n_test"].tolist() == [1, 0, 0]
    assert known_items(batch, 10) is batch


def _config(root: Path, inputs: Path, synthetic: Path, encoder: Path, day: str, retrain: str) -> Path:
    new_tags = root / "new_tags.csv"
    new_tags.write_text('tag,description\ncamping,"tents and outdoor gear"\ncoffee break,"coffee and tea"\n')
    one_epoch = {"train": {"epochs": 1}}
    cfg = {
        "out": str(root / "warehouse"), "work": str(root / "work"), "dt": day, "incremental": True,
        "input": {"input": str(inputs), "items": str(synthetic / "items.parquet")},
        "embed": {"encoder": str(encoder)},
        "train": {"num_workers": 1},
        "score": {"batch_size": 64},
        "privacy": {"pseudonymize": True, "key_env": "TEST_PSEUDONYM_KEY", "mapping": str(root / "mapping")},
        "tasks": {
            # The sequence model is refit: night 2 scores with night 1's refit.
            "sequence": {"config": {"preset": "small", **one_epoch}, "gate": {"metric": ""}, "retrain": retrain},
            "tags": {"top_k": 3, "config": {"mode": "cached", **one_epoch}, "gate": {"metric": ""},
                     "refit": False, "retrain": retrain},
            "recommend": {"config": one_epoch, "gate": {"metric": ""}, "refit": False, "retrain": retrain},
            "zeroshot": {"new_tags": str(new_tags), "audience": 40, "config": one_epoch, "refit": False,
                         "retrain": retrain},
        },
    }
    path = root / f"pipeline-{day}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory, synthetic_small, tiny_encoder):
    root = tmp_path_factory.mktemp("incremental")
    inputs = root / "input"
    _, d2, movers = _split_days(synthetic_small, root / "days")
    inputs.mkdir()
    shutil.copy(root / "days" / "d1.parquet", inputs / "d1.parquet")
    mp = pytest.MonkeyPatch()
    mp.setenv("TEST_PSEUDONYM_KEY", KEY)
    try:
        assert cli.main(["pipeline", "--config", str(_config(root, inputs, synthetic_small, tiny_encoder, DAY1,
                                                             "if_missing"))]) == 0
        shutil.copy(d2, inputs / "d2.parquet")
        assert cli.main(["pipeline", "--config", str(_config(root, inputs, synthetic_small, tiny_encoder, DAY2,
                                                             "never"))]) == 0
    finally:
        mp.undo()
    return root, pseudonyms(movers, KEY.encode()), pseudonyms([f"NEW{i}" for i in range(NEW_USERS)], KEY.encode())


def _rows(folder, table: str) -> pa.Table:
    keys = [(S.USER_ID, "ascending"), ("rank", "ascending")]
    return pads.dataset(folder, format="parquet").to_table().select(S.OUTPUTS[table].names).sort_by(keys)


def test_night_two_scores_only_the_users_with_new_events(two_nights):
    root, movers, newcomers = two_nights
    out = str(root / "warehouse")
    night1, night2 = W.latest_published(out, DAY1), W.latest_published(out, DAY2)
    assert night2["input"]["update"]["mode"] == "incremental" and night2["input"]["update"]["files_read"] == 1
    assert night2["incremental"]["scored_users"] == CHANGED_USERS + NEW_USERS
    assert night2["incremental"]["carried_users"] == night1["users"] - CHANGED_USERS
    assert night2["incremental"]["carried_from"] == night1["run_id"]
    assert night2["users"] == night1["users"] + NEW_USERS
    # the models were reused, the sequence model as night 1 refit it
    for name, model in night2["models"].items():
        assert model["scored_with"] == night1["models"][name]["scored_with"], name
    assert "+refit-" + DAY1 in night2["models"]["sequence"]["scored_with"]
    assert W.verify(out, DAY2) == []
    page = Path(report_folder(out, DAY2)) / "report.html"
    text = page.read_text()  # the report says so
    assert f"the other {night2['incremental']['carried_users']:,} users" in text
    assert f"carried over unchanged from run {night1['run_id']}" in text
    for table in TABLES:
        before, after = _rows(root / "warehouse" / table / f"dt={DAY1}", table), \
            _rows(root / "warehouse" / table / f"dt={DAY2}", table)
        stay = pc.invert(pc.is_in(before.column(S.USER_ID), value_set=movers))
        kept = after.filter(pc.is_in(after.column(S.USER_ID), value_set=before.column(S.USER_ID)))
        assert before.filter(stay).equals(kept.filter(pc.invert(pc.is_in(kept.column(S.USER_ID),
                                                                          value_set=movers)))), table
        assert set(newcomers.to_pylist()) <= set(after.column(S.USER_ID).to_pylist()), table
        # the movers were scored again, after their new events
        moved = lambda t: t.filter(pc.is_in(t.column(S.USER_ID), value_set=movers))  # noqa: E731
        assert not moved(before).equals(moved(after)), table


def test_an_incremental_night_equals_a_full_scoring(two_nights, tmp_path):
    """Every user of night 2 scored again in one full pass, with the same models and the
    state they froze: the same rows as the night's carried and scored ones, user by user."""
    root = two_nights[0]
    out = str(root / "warehouse")
    night2 = W.latest_published(out, DAY2)
    prepared = night2["input"]["prepared"]
    outputs = []
    for name, model in night2["models"].items():
        step = night2["config"]["tasks"][name]
        table = {"sequence": "user_next_actions", "tags": "user_tags", "recommend": "user_recommendations",
                 "zeroshot": "user_zeroshot"}[name]
        outputs.append(plan(model["scored_with"], prepared, str(tmp_path / table), top_k=step.get("top_k", 10),
                            tags=step.get("new_tags"), behavior_counts=night2["input"]["behaviors"]))
    done = score_users(outputs, prepared, batch_size=64, key=KEY.encode())
    assert done["users"] == night2["users"]
    for o in outputs:
        full, incremental = _rows(tmp_path / o.table, o.table), _rows(root / "warehouse" / o.table / f"dt={DAY2}",
                                                                       o.table)
        assert full.num_rows == incremental.num_rows, o.table
        for column in full.column_names:
            a, b = full.column(column), incremental.column(column)
            if pa.types.is_floating(a.type):  # batches of other users: float sums in another order
                np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-4, atol=1e-6, err_msg=o.table)
            else:
                assert a.equals(b), f"{o.table}.{column}"
