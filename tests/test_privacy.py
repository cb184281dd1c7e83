"""Privacy (issue 25): pseudonymised user ids, forget requests that really forget, and
sensitive tags that are never published.

Two nights of the pipeline on ``synthetic_small``, both with pseudonyms and the tag
``toys`` (the commonest interest there) excluded; the second also with a forget list
naming users the first night scored. Then every file either night left behind is read
back, and no forgotten user is in any of them."""

import hashlib
import hmac
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from interest import cli
from interest import schemas as S
from interest.common import tags as L
from interest.data.privacy import pseudonyms
from interest.pipeline import warehouse as W
from interest.score.batch import withhold
from conftest import set_dotted

DAY1, DAY2 = "2026-11-30", "2026-12-01"
KEY = "a-test-key-of-enough-length"
FORGET = 5
TABLES = ("user_next_actions", "user_tags", "user_zeroshot", "tag_audiences")
SENSITIVE = "toys"


def test_pseudonyms_are_keyed_hmacs():
    ids = ["U0000001", "U0000002"]
    a, b = pseudonyms(ids, b"k" * 16).to_pylist(), pseudonyms(ids, b"j" * 16).to_pylist()
    assert a == [hmac.new(b"k" * 16, u.encode(), hashlib.sha256).hexdigest() for u in ids]
    assert a == pseudonyms(ids, b"k" * 16).to_pylist()  # stable under one key
    assert not set(a) & set(b) and len(set(a)) == 2  # another key, other pseudonyms


def test_excluded_tags_leave_the_vocabulary_and_their_items_the_rankings():
    items = pa.table({S.ITEM_IDX: pa.array([0, 1, 2, 3], pa.int32()),
                      S.CATEGORY: ["toys.lego", "health.vitamins", "healthy.food", "toys"]})
    space = L.build(items, exclude=["health", "toys.lego"])
    assert space.tags == ["toys", "healthy", "healthy.food"]  # a prefix is a whole path level, not letters
    assert space.withheld_items.tolist() == [0, 1]  # item 0's other tag (toys) stays, but it is withheld
    assert [space.tags[t] for t in space.of(0)] == ["toys"] and len(space.of(1)) == 0
    rows = pa.table({S.USER_ID: ["a"] * 4 + ["b"] * 4, "rank": pa.array([1, 2, 3, 4] * 2, pa.int32()),
                     S.ITEM_ID: ["i1", "x", "i2", "i3", "x", "y", "i4", "i5"]})
    kept, counted = withhold(rows, pa.array(["x", "y"]), 3)
    assert counted == [3]  # among the first 3 ranks: a's x, b's x and y
    assert [(r[S.USER_ID], r["rank"], r[S.ITEM_ID]) for r in kept.to_pylist()] == [
        ("a", 1, "i1"), ("a", 2, "i2"), ("a", 3, "i3"), ("b", 1, "i4"), ("b", 2, "i5")]


def _config(root: Path, synthetic: Path, encoder: Path, **changes) -> Path:
    new_tags = root / "new_tags.csv"
    new_tags.write_text('tag,description\ncamping,"tents and outdoor gear"\ncoffee break,"coffee and tea"\n'
                        'toys.building blocks,"bricks and construction sets"\n')
    cfg = {
        "out": str(root / "warehouse"), "work": str(root / "work"), "dt": DAY1,
        "input": {"input": str(synthetic / "events"), "items": str(synthetic / "items.parquet")},
        "embed": {"encoder": str(encoder)},
        "train": {"num_workers": 1},
        "score": {"batch_size": 64},
        "privacy": {"pseudonymize": True, "key_env": "TEST_PSEUDONYM_KEY", "mapping": str(root / "mapping"),
                    "exclude_tags": [SENSITIVE]},
        "tasks": {  # no refits: what is checked here does not need them, and each costs a training
            "sequence": {"config": {"preset": "small", "train": {"epochs": 1}}, "gate": {"metric": ""},
                         "refit": False},
            "tags": {"top_k": 3, "config": {"mode": "cached", "train": {"epochs": 1}}, "gate": {"metric": ""},
                     "refit": False},
            "zeroshot": {"new_tags": str(new_tags), "audience": 40, "config": {"train": {"epochs": 1}},
                         "refit": False},
        },
    }
    set_dotted(cfg, changes)
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_missing_key_fails_before_ray_starts(tmp_path, synthetic_small, tiny_encoder, monkeypatch, capsys):
    import ray_jobs.pipeline

    monkeypatch.setattr(ray_jobs.pipeline, "init_ray", lambda *a, **k: pytest.fail("Ray started"))
    monkeypatch.delenv("TEST_PSEUDONYM_KEY", raising=False)
    assert cli.main(["pipeline", "--config", str(_config(tmp_path, synthetic_small, tiny_encoder))]) == 2
    err = capsys.readouterr().err
    assert "TEST_PSEUDONYM_KEY" in err and "holds no key" in err


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory, synthetic_small, tiny_encoder):
    """Night 1 pseudonymised; night 2 also forgets ``FORGET`` of night 1's users."""
    root = tmp_path_factory.mktemp("privacy")
    mp = pytest.MonkeyPatch()
    mp.setenv("TEST_PSEUDONYM_KEY", KEY)
    try:
        config = _config(root, synthetic_small, tiny_encoder)
        assert cli.main(["pipeline", "--config", str(config)]) == 0
        users = sorted(pq.read_table(root / "work" / "prepared" / "vocab" / "users").column(S.USER_ID).to_pylist())
        night1 = {t: pq.read_table(root / "warehouse" / t / f"dt={DAY1}") for t in TABLES}
        run1 = {name: m["run"] for name, m in W.latest_published(str(root / "warehouse"), DAY1)["models"].items()}
        forgotten = users[::len(users) // FORGET][:FORGET]
        (root / "forget.csv").write_text("user_id\n" + "\n".join(forgotten) + "\n")
        config = _config(root, synthetic_small, tiny_encoder, dt=DAY2, **{"privacy.forget": str(root / "forget.csv")})
        assert cli.main(["pipeline", "--config", str(config)]) == 0
        yield {"root": root, "config": config, "users": users, "forgotten": forgotten, "night1": night1,
               "run1": run1}
    finally:
        mp.undo()


def _pseudonym(user: str) -> str:
    return hmac.new(KEY.encode(), user.encode(), hashlib.sha256).hexdigest()


@pytest.mark.ray
def test_outputs_carry_pseudonyms_and_the_mapping_links_them(two_nights, capsys):
    root, users = two_nights["root"], two_nights["users"]
    out = root / "warehouse"
    for table, data in two_nights["night1"].items():
        ids = set(data.column(S.USER_ID).to_pylist())
        assert all(re.fullmatch(r"[0-9a-f]{64}", u) for u in ids), table
        if table != "tag_audiences":
            assert ids == {_pseudonym(u) for u in users}  # every user, under the key
    mapping = pq.read_table(root / "mapping" / f"dt={DAY2}").to_pylist()
    kept = [u for u in users if u not in two_nights["forgotten"]]
    assert sorted(r[S.USER_ID] for r in mapping) == kept
    assert all(r["pseudonym"] == _pseudonym(r[S.USER_ID]) for r in mapping)  # the same key, the same pseudonym
    night2 = pq.read_table(out / "user_tags" / f"dt={DAY2}").column(S.USER_ID).to_pylist()
    assert set(night2) == {_pseudonym(u) for u in kept}
    for day in (DAY1, DAY2):  # completeness is checked against the day's mapping
        assert cli.main(["verify-output", str(out), "--dt", day]) == 0, capsys.readouterr().err
    # No raw id anywhere in the warehouse, nor the key.
    for path, text in _texts(out):
        assert KEY not in text, path
        assert not set(re.findall(r"U\d{7}", text)) & set(users), path


@pytest.mark.ray
def test_a_sensitive_tag_is_never_published_even_as_a_top_tag(two_nights):
    root = two_nights["root"]
    events = pq.read_table(root / "work" / "prepared" / "events", columns=[S.USER_ID, S.ITEM_ID])
    items = pq.read_table(root / "work" / "prepared" / "items").to_pylist()
    sensitive = {r[S.ITEM_ID] for r in items if (r[S.CATEGORY] or "").split(".")[0] == SENSITIVE}
    top = {}  # each user's commonest top-level category
    for u, i in zip(events.column(S.USER_ID).to_pylist(), events.column(S.ITEM_ID).to_pylist()):
        top.setdefault(u, []).append(SENSITIVE if i in sensitive else "other")
    toy_lovers = [u for u, c in top.items() if c.count(SENSITIVE) > len(c) / 2]
    assert toy_lovers, "the synthetic data has no user whose top interest is the sensitive tag"
    for day in (DAY1, DAY2):
        for table in ("user_tags", "user_zeroshot", "tag_audiences"):
            tags = set(pq.read_table(root / "warehouse" / table / f"dt={day}").column(S.TAG).to_pylist())
            assert tags and not any(L.excluded(t, [SENSITIVE]) for t in tags), (table, tags)
        actions = pq.read_table(root / "warehouse" / "user_next_actions" / f"dt={day}")
        assert not set(actions.column(S.ITEM_ID).to_pylist()) & sensitive
        users = set(actions.column(S.USER_ID).to_pylist())
        assert actions.num_rows == 10 * len(users)  # every user keeps a full top 10, ranked 1..10
        assert sorted(set(actions.column("rank").to_pylist())) == list(range(1, 11))
        manifest = W.latest_published(str(root / "warehouse"), day)
        assert manifest["privacy"]["withheld_rows"]["user_next_actions"] > 0
        zeroshot = pq.read_table(root / "warehouse" / "user_zeroshot" / f"dt={day}")
        assert zeroshot.num_rows == 2 * len(users)  # the two other new tags; the sensitive one is not scored
    tagged = pq.read_table(root / "warehouse" / "user_tags" / f"dt={DAY2}")
    lovers = {_pseudonym(u) for u in toy_lovers}
    assert lovers & set(tagged.column(S.USER_ID).to_pylist())  # they still have their other tags


@pytest.mark.ray
def test_forgotten_users_are_in_no_file_of_either_night(two_nights):
    root, forgotten = two_nights["root"], two_nights["forgotten"]
    manifest = W.latest_published(str(root / "warehouse"), DAY2)
    assert manifest["input"]["forgotten"] > 0 and manifest["privacy"]["forgotten_events"] == manifest["input"][
        "forgotten"]
    assert manifest["privacy"]["earlier_days_rewritten"][DAY1]["user_tags"] == 3 * FORGET
    # Models trained on their events were retrained, and the old runs deleted.
    for name, run in two_nights["run1"].items():
        assert manifest["models"][name]["run"] != run and not Path(run).exists()
        assert manifest["models"][name]["removed_under_forget_list"] >= 1
    # The first night's partitions lost exactly those users' rows, and its manifest says so.
    before = W.latest_published(str(root / "warehouse"), DAY1)
    for table in ("user_tags", "user_next_actions", "user_zeroshot"):
        now = pq.read_table(root / "warehouse" / table / f"dt={DAY1}")
        old = two_nights["night1"][table]
        gone = {_pseudonym(u) for u in forgotten}
        assert now.num_rows == old.num_rows - sum(u in gone for u in old.column(S.USER_ID).to_pylist())
        assert before["tables"][table]["rows"] == now.num_rows
    ranks = pq.read_table(root / "warehouse" / "tag_audiences" / f"dt={DAY1}").to_pylist()
    for tag in {r[S.TAG] for r in ranks}:  # audiences renumbered without gaps
        assert sorted(r["rank"] for r in ranks if r[S.TAG] == tag) == list(range(1, 1 + sum(
            r[S.TAG] == tag for r in ranks)))
    # Every file either night left: warehouse, work (prepared data, runs, checkpoints,
    # logs, step records), mappings. Parquet decoded column by column, the rest as text.
    needles = set(forgotten) | {_pseudonym(u) for u in forgotten}
    checked = 0
    for path, text in _texts(root, skip={root / "forget.csv"}):
        found = [n for n in needles if n in text]
        assert not found, f"{path} holds forgotten user {found[0]}"
        checked += 1
    assert checked > 50


@pytest.mark.ray
def test_a_run_that_must_be_reused_is_refused_when_the_forget_list_changed(two_nights, capsys):
    root = two_nights["root"]
    (root / "forget.csv").write_text((root / "forget.csv").read_text() + two_nights["users"][1] + "\n")
    cfg = yaml.safe_load(two_nights["config"].read_text())
    cfg["tasks"]["sequence"]["retrain"] = "never"
    cfg["dt"] = "2026-12-02"
    path = root / "never.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_PSEUDONYM_KEY", KEY)
        assert cli.main(["pipeline", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "trained before the current forget list" in err and "nothing is published" in err
    assert W.latest_published(str(root / "warehouse"), "2026-12-02") is None


def _texts(root: Path, skip: set = frozenset()):
    """(path, text) of every file under ``root``: a Parquet file's decoded values (bytes
    can hide in compressed pages), any other file's bytes."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p not in skip):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            yield path, json.dumps(table.to_pylist(), default=str) + json.dumps(
                [str(table.schema.metadata or {})])
        else:
            yield path, path.read_bytes().decode("latin-1")
