"""Task ``zeroshot``: new tags scored from text, example items or example users; the tags
file's checks; the two output tables; and, on synthetic data with personas, a held-out
category's fans found from its name alone."""

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from interest import config as C
from interest import schemas as S
from interest.evaluate.metrics import auc, recall_at
from interest.score.batch import top_per_group
from interest.tasks.zeroshot.model import ZeroShotModel, ZeroShotModelConfig
from interest.tasks.zeroshot.newtags import read_new_tags
from interest.tasks.zeroshot.task import ZeroShotConfig, prototype, tag_text, visible
from interest.text import encoder as E


# --- pure functions ---------------------------------------------------------------------

def test_auc_and_recall_match_their_definitions():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    y = rng.random(200) < 0.3
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in scores[y] for b in scores[~y]]
    assert auc(scores, y) == pytest.approx(np.mean(pairs))
    assert auc(scores, np.zeros(200, bool)) is None
    # Ties at the cut count against the positives: all-equal scores put every negative first.
    assert recall_at(np.ones(10), np.arange(10) < 2, 8) == 0.0
    assert recall_at(np.arange(10.0), np.arange(10) >= 8, 2) == 1.0


def test_tags_file_problems_name_their_row(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("tag,description,example_item_ids\ncamping,tents and stoves,I1;I2\n,no name,\n")
    with pytest.raises(S.SchemaError, match=r"row 3: the tag is empty"):
        read_new_tags(str(path), {"I1", "I2"})
    path.write_text("tag,description,example_item_ids\ncamping,tents,I1;I2\ngifts,for parents,I1;I9\n")
    with pytest.raises(S.SchemaError, match=r"row 3 \('gifts'\): unknown example item id\(s\) I9"):
        read_new_tags(str(path), {"I1", "I2"})
    path.write_text("tag,example_item_ids\ncamping,I1\n")
    with pytest.raises(S.SchemaError, match="missing column\\(s\\) description"):
        read_new_tags(str(path))
    path.write_text("tag,description\ncamping,a\ncamping,b\n")
    with pytest.raises(S.SchemaError, match="row 3: tag 'camping' repeats row 2"):
        read_new_tags(str(path))
    path.write_text("tag,description,example_item_ids,example_user_ids\n露营装备,帐篷,I1;I2,U1\nplain,,,\n")
    tags = read_new_tags(str(path), {"I1", "I2"}, {"U1"})
    assert [(t.tag, t.example_item_ids, t.example_user_ids) for t in tags] == [
        ("露营装备", ["I1", "I2"], ["U1"]), ("plain", [], [])]


def test_tag_text_reads_paths_and_descriptions():
    assert tag_text("sports.yoga_mat", None, ".") == "sports > yoga mat"
    assert tag_text("camping", "tents, stoves and lanterns", ".") == "camping: tents, stoves and lanterns"
    assert tag_text("Industrial & Scientific Fasteners", "Industrial & Scientific Fasteners", ".") == \
        "Industrial & Scientific Fasteners"


def test_hidden_items_leave_histories_and_split_counts():
    batch = {S.USER_IDX: np.array([0, 1]), "items": np.array([np.array([1, 2, 3, 2]), np.array([2, 2])], object),
             "behaviors": np.array([np.zeros(4), np.ones(2)], object),
             "ts": np.array([np.arange(4), np.arange(2)], object),
             "n_train": np.array([2, 1]), "n_valid": np.array([1, 0]), "n_test": np.array([1, 1])}
    blocked = np.array([False, False, True, False])
    out = visible(batch, blocked)
    assert [list(x) for x in out["items"]] == [[1, 3], []]
    assert list(out["n_train"]) == [1, 0] and list(out["n_valid"]) == [1, 0] and list(out["n_test"]) == [0, 0]
    assert [list(x) for x in out["ts"]] == [[0, 2], []]


def test_an_untrained_model_scores_by_text_match_and_prototypes_average_examples():
    torch.manual_seed(0)
    item_vectors = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)  # as the store keeps them
    model = ZeroShotModel(item_vectors, ZeroShotModelConfig(facets=2, max_len=5)).eval()
    cfg = ZeroShotConfig(embeddings="store", text_weight=2.0)
    history = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 5, 6]])
    users, bias = model.encode_users(history, torch.ones(2, 5, dtype=torch.long))
    tags = torch.randn(3, 16)
    # Before training a user's score for a tag is the cosine of their mean history text
    # with the tag's text, scaled, plus a bias shared by every tag: the text-match baseline.
    mean = torch.nn.functional.normalize(torch.stack([model.item_vectors[h[h > 0]].mean(0) for h in history]), dim=-1)
    expected = model.scale() * mean @ torch.nn.functional.normalize(tags, dim=-1).t() + bias[:, None]
    torch.testing.assert_close(model.logits(users, bias, model.encode_text(tags)), expected)
    items = torch.randn(3, 16)
    text = model.encode_text(torch.randn(16))
    torch.testing.assert_close(prototype(model, cfg, None, items, users[:0]),
                               torch.nn.functional.normalize(model.encode_text(items).sum(0), dim=0))
    both = prototype(model, cfg, text, items[:1], users)
    expected = torch.nn.functional.normalize(2 * text + model.encode_text(items[0]) + model.as_tag(users).sum(0), dim=0)
    torch.testing.assert_close(both, expected)
    # A user with no history gets a finite score, and training moves both towers: the
    # shared metric and the attention over the history.
    model.train()
    # (Behaviours differ along the history: a shift shared by every event moves no attention.)
    users, bias = model(torch.tensor([[0, 0, 1, 2, 3], [0, 0, 0, 0, 0]]), torch.tensor([[0, 0, 1, 5, 2], [0] * 5]))
    scores = model.logits(users, bias, model.encode_text(torch.randn(4, 16)))
    assert torch.isfinite(scores).all()
    torch.log_softmax(scores, 1)[:, 0].sum().backward()
    assert model.metric.weight.grad.abs().sum() > 0 and model.behavior.weight.grad.abs().sum() > 0


def test_top_per_group_keeps_each_groups_best():
    table = pa.table({S.TAG: ["a", "b", "a", "a", "b"], S.USER_ID: ["u1", "u2", "u3", "u4", "u5"],
                      "score": [0.1, 0.9, 0.5, 0.5, 0.2]})
    top = top_per_group(table, S.TAG, "score", 2).to_pylist()
    assert [(r[S.TAG], r[S.USER_ID]) for r in top] == [("a", "u3"), ("a", "u4"), ("b", "u2"), ("b", "u5")]


def test_plots_write_a_png(tmp_path):
    from interest.report.plots import line_chart

    path = line_chart(str(tmp_path / "sub" / "curve.png"), {"model": ([0, 1, 5], [0.6, 0.65, 0.7])},
                      title="t", xlabel="x", ylabel="y", levels={"baseline": 0.55}, xticks=[0, 1, 5])
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_personas_correlate_a_users_interests(tmp_path):
    from interest.data.synthetic import PERSONAS, SyntheticConfig, generate

    share = {}
    for personas in (0.0, 0.8):
        out = tmp_path / str(personas)
        generate(SyntheticConfig(users=1500, items=300, events=3000, personas=personas, seed=2), str(out))
        truth = pq.read_table(out / "ground_truth.parquet").to_pydict()
        pairs = [(a, b) for xs in truth["interests_early"] for i, a in enumerate(xs) for b in xs[i + 1:]]
        share[personas] = np.mean([any(a in g and b in g for g in PERSONAS.values()) for a, b in pairs])
        assert (truth["persona"][0] is None) == (personas == 0)
    assert share[0.0] < 0.3 < 0.55 < share[0.8], share
    with pytest.raises(C.ConfigError, match="personas must lie in"):
        SyntheticConfig(personas=1.0)


# --- on Ray -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zeroshot_run(prepared_small, bow_store, tmp_path_factory):
    """A zeroshot model trained on ``prepared_small`` (bag-of-words item vectors)."""
    from interest.train.loop import fit

    encoder, store = bow_store
    run = tmp_path_factory.mktemp("zeroshot") / "run"
    result = fit("zeroshot", str(prepared_small), str(run), {
        "embeddings": str(store), "encoder": str(encoder), "model": {"facets": 2},
        "train": {"epochs": 3, "batch_size": 64, "patience": 1}}, num_workers=2)
    assert result.error is None
    return run


@pytest.mark.ray
def test_a_validation_with_nothing_to_measure_is_nan_and_stops_nothing(zeroshot_run):
    """No validation user of ``prepared_small`` has a tag both ways, so no AUC exists: NaN,
    not 0.0, and patience 1 stops nothing (each epoch's weights are the result)."""
    from interest.train import checkpoint as ckpt

    state = ckpt.load_state(ckpt.latest_checkpoint(str(zeroshot_run)))
    epochs = [r for r in state["history"] if "refit" not in r]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert all(math.isnan(r["valid/auc"]) and r["valid/tags"] == 0 for r in epochs), epochs
    assert state["best_epoch"] == 2 and math.isnan(state["best"])


@pytest.mark.ray
def test_new_tags_score_from_text_items_or_users_and_audiences_are_global(zeroshot_run, prepared_small, bow_store,
                                                                          tmp_path, capsys):
    from ray_jobs import score

    items = pq.read_table(prepared_small / "items", columns=[S.ITEM_ID, S.CATEGORY]).to_pydict()
    tents = [i for i, c in zip(items[S.ITEM_ID], items[S.CATEGORY]) if c == "sports.tent"][:3]
    users = pq.read_table(prepared_small / "vocab" / "users", columns=[S.USER_ID]).column(S.USER_ID).to_pylist()
    tags = tmp_path / "new_tags.csv"
    # Text only (English, and Chinese whose characters the tiny encoder knows), items only, users only.
    tags.write_text("tag,description,example_item_ids,example_user_ids\n"
                    "camping,sports tent,,\n运动帐篷,运动 帐篷,,\n"
                    f"tent lookalikes,,{';'.join(tents)},\nlike these users,,,{';'.join(users[:2])}\n")
    out = tmp_path / "scores"
    assert score.main(["--run", str(zeroshot_run), "--data", str(prepared_small), "--out", str(out),
                       "--tags", str(tags), "--audience", "25"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scored = pq.read_table(out / "user_zeroshot")
    assert scored.schema.equals(S.OUTPUTS["user_zeroshot"])
    assert scored.num_rows == 4 * len(users) == report["rows"]
    per_user = scored.group_by(S.USER_ID).aggregate([("rank", "min"), ("rank", "max"), ("tag", "count_distinct")])
    assert set(per_user["rank_min"].to_pylist()) == {1} and set(per_user["rank_max"].to_pylist()) == {4}
    assert set(per_user["tag_count_distinct"].to_pylist()) == {4}
    assert all(0 < len(e) <= 3 for e in scored.column("evidence").to_pylist()[:200])
    for tag in ("camping", "运动帐篷", "tent lookalikes", "like these users"):
        s = scored.filter(pc.equal(scored[S.TAG], tag)).column("score").to_numpy()
        assert np.isfinite(s).all() and s.std() > 0, tag
    # The audience is the global top 25 of each tag, not a batch's.
    audiences = pq.read_table(out / "tag_audiences")
    assert audiences.schema.equals(S.OUTPUTS["tag_audiences"]) and audiences.num_rows == 4 * 25
    for tag in ("camping", "like these users"):
        got = audiences.filter(pc.equal(audiences[S.TAG], tag)).sort_by("rank")
        want = scored.filter(pc.equal(scored[S.TAG], tag)).sort_by([("score", "descending"),
                                                                     (S.USER_ID, "ascending")]).slice(0, 25)
        assert got.column(S.USER_ID).to_pylist() == want.column(S.USER_ID).to_pylist()
        assert got.column("rank").to_pylist() == list(range(1, 26))
    # What of each tag matched: its example items the user has, its words in the evidence.
    vocab = pq.read_table(prepared_small / "vocab" / "items.parquet", columns=[S.ITEM_ID]).column(S.ITEM_ID)
    seqs = pq.read_table(prepared_small / "sequences", columns=[S.USER_ID, "items"]).to_pylist()
    history = {r[S.USER_ID]: {vocab[i].as_py() for i in r["items"]} for r in seqs}
    category = dict(zip(items[S.ITEM_ID], items[S.CATEGORY]))
    rows = scored.to_pylist()
    lookalikes = [r for r in rows if r[S.TAG] == "tent lookalikes"]
    assert all(set(r[S.MATCHED_ITEMS]) <= set(tents) & history[r[S.USER_ID]] for r in lookalikes)
    assert any(r[S.MATCHED_ITEMS] for r in lookalikes)
    camping = [r for r in rows if r[S.TAG] == "camping"]
    assert all(set(r[S.MATCHED_WORDS]) <= {"camping", "sports", "tent"} for r in camping)
    tented = [r for r in camping if any(category[i] == "sports.tent" for i in r[S.EVIDENCE])]
    assert tented and all({"sports", "tent"} <= set(r[S.MATCHED_WORDS]) for r in tented)
    assert not any(r[S.MATCHED_ITEMS] or r[S.MATCHED_WORDS] for r in rows if r[S.TAG] == "like these users")
    # An audience row says why, as the user's row does.
    why = {(r[S.USER_ID], r[S.TAG]): (r[S.EVIDENCE], r[S.MATCHED_ITEMS], r[S.MATCHED_WORDS]) for r in rows}
    assert all(why[r[S.USER_ID], r[S.TAG]] == (r[S.EVIDENCE], r[S.MATCHED_ITEMS], r[S.MATCHED_WORDS])
               for r in audiences.to_pylist())
    # The Chinese name was read, not turned into unknown tokens.
    _, tokenizer, _ = E.load(str(bow_store[0]))
    assert tokenizer.unk_token_id not in tokenizer("运动帐篷")["input_ids"]


@pytest.mark.ray
def test_a_malformed_tags_file_fails_before_scoring_with_its_row(zeroshot_run, prepared_small, tmp_path, capsys):
    from ray_jobs import score

    tags = tmp_path / "bad.csv"
    tags.write_text("tag,description,example_item_ids\ngood,x,\nbad,y,NO_SUCH_ITEM\n")
    assert score.main(["--run", str(zeroshot_run), "--data", str(prepared_small), "--out", str(tmp_path / "o"),
                       "--tags", str(tags)]) == 2
    assert "row 3 ('bad'): unknown example item id(s) NO_SUCH_ITEM" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert score.main(["--run", str(zeroshot_run), "--data", str(prepared_small), "--out", str(tmp_path / "o")]) == 2
    assert "give --tags FILE" in capsys.readouterr().err


@pytest.mark.ray
def test_held_out_category_fans_rank_above_the_rest_from_its_name(tmp_path, ray_start_4_cpus):
    """Synthetic shoppers with personas: categories held out of training (no tag, no
    event) are scored from their names alone, and their planted fans rank well above the
    rest, far better than by activity. The item and tag texts go through the packaged
    MiniLM: that a tent, a jacket and a bicycle are gear for the same shopper is what the
    text carries, and a random encoder cannot know it."""
    from interest.data.prepare import PrepareConfig, SplitConfig, prepare
    from interest.data.synthetic import SyntheticConfig, generate
    from interest.tasks.zeroshot.newtags import NewTag
    from interest.text.embed import EmbedConfig, embed_items
    from interest.train.checkpoint import load_model
    from interest.train.loop import fit

    raw = tmp_path / "raw"
    generate(SyntheticConfig(users=2000, items=800, events=60_000, personas=0.8, noise=0.3, seed=5), str(raw))
    prepared = tmp_path / "prepared"
    prepare(PrepareConfig(input=str(raw / "events"), items=str(raw / "items.parquet"), out=str(prepared),
                          split=SplitConfig(method="time", test_frac=0.2)))
    embed_items(str(prepared), str(tmp_path / "store"), EmbedConfig())
    holdout = ["sports.tent", "food.tea", "toys.doll", "home.sofa"]
    result = fit("zeroshot", str(prepared), str(tmp_path / "run"), {
        "embeddings": str(tmp_path / "store"), "holdout": holdout, "train": {"epochs": 8}}, num_workers=2)
    assert result.error is None
    task, cfg, model, _, meta = load_model(str(tmp_path / "run"), str(prepared))
    # What the model saw: no held-out tag among those it trained on, and every event on
    # the held-out categories' items hidden.
    tags = meta.extra["tags"]
    assert not {tags.tags[j] for j in meta.extra["trained"]} & set(holdout)
    categories = pq.read_table(prepared / "items").sort_by(S.ITEM_IDX).column(S.CATEGORY).to_pylist()
    assert list(meta.extra["blocked"]) == [c in holdout for c in categories]

    sequences = pq.read_table(prepared / "sequences", columns=task.train_columns())
    batch = {c: sequences.column(c).to_numpy(zero_copy_only=False) for c in sequences.column_names}
    with torch.no_grad():
        users, bias, seen = task.test_users(model, batch, cfg, meta, torch.device("cpu"))
        names = torch.as_tensor(task.new_tag_vectors(model, cfg, meta, str(prepared), [NewTag(t) for t in holdout]))
        scores = model.logits(users, bias, names).numpy()
    activity = seen["n_train"] + seen["n_valid"]
    truth = pq.read_table(raw / "ground_truth.parquet").to_pydict()
    interests = dict(zip(truth[S.USER_ID], truth["interests_late"]))
    model_auc, activity_auc = [], []
    for j, tag in enumerate(holdout):
        fans = np.array([tag in interests.get(u, []) for u in batch[S.USER_ID]])
        assert fans.sum() >= 50
        model_auc.append(auc(scores[:, j], fans))
        activity_auc.append(auc(activity, fans))
    assert np.mean(model_auc) > 0.55 and np.mean(model_auc) > np.mean(activity_auc) + 0.1, (model_auc, activity_auc)
