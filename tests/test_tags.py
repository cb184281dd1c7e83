"""The text component and task ``tags``: tokenising Chinese titles, the item embedding
cache, the tag vocabulary, and both modes learning a planted pattern through Ray Train."""

import datetime as dt
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_per_user_matches, prepare_planted
from interest import config as C
from interest import schemas as S
from interest.config import ConfigError
from interest.common import tags as L
from interest.tasks.tags.task import TagsConfig
from interest.text import encoder as E


def test_chinese_titles_tokenise_and_round_trip(synthetic_small, tiny_encoder):
    _, tokenizer, _ = E.load(str(tiny_encoder))
    texts = [t for t in E.item_texts(pq.read_table(synthetic_small / "items.parquet"))
             if re.search(r"[\u4e00-\u9fff]", t)]
    assert texts, "the synthetic catalogue has Chinese titles"
    for text in texts[:20]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")


def test_missing_encoder_is_named():
    with pytest.raises(E.InputError, match="/no/such/model not found"):
        E.load("/no/such/model")


def test_tag_sources_and_taxonomy(tmp_path):
    assert L.derive_tags("a.b.c", "levels", ".") == ["a", "a.b", "a.b.c"]
    assert L.derive_tags("Comedy|Drama", "tokens", "|") == ["Comedy", "Drama"]
    assert L.derive_tags("x y", "whole", ".") == ["x y"]
    items = pa.table({S.ITEM_IDX: pa.array([0, 1, 2], pa.int32()), S.CATEGORY: ["home.kitchen", "toys", None]})
    space = L.build(items)
    assert space.tags == ["home", "home.kitchen", "toys"]
    assert [list(space.of(i)) for i in range(3)] == [[0, 1], [2], []]
    assert space.report["items_without_tags"] == 1
    taxonomy = tmp_path / "tags.parquet"
    pq.write_table(pa.table({S.TAG: ["cooking", "space"], S.DESCRIPTION: ["kitchen things", "rockets"],
                             "categories": [["home"], ["aerospace"]]}), taxonomy)
    space = L.build(items, taxonomy=str(taxonomy))
    assert [list(space.of(i)) for i in range(3)] == [[0], [], []]  # "home" covers home.kitchen
    assert space.report["tags_without_items"] == ["space"]  # counted, not dropped
    pq.write_table(pa.table({"name": ["x"]}), taxonomy)
    with pytest.raises(S.SchemaError, match="required column 'tag' is missing"):
        L.build(items, taxonomy=str(taxonomy))
    # Paths whose separators were lost: the levels are the catalogue's shorter categories.
    lost = pa.table({S.ITEM_IDX: pa.array(range(4), pa.int32()),
                     S.CATEGORY: ["Lab Glassware", "Lab Glassware Beakers", "Lab Tapes", "Lab Glass"]})
    space = L.build(lost, source="prefixes")
    assert [[space.tags[t] for t in space.of(i)] for i in range(4)] == [
        ["Lab Glassware"], ["Lab Glassware", "Lab Glassware Beakers"], ["Lab Tapes"], ["Lab Glass"]]


def test_tag_transitions_count_consecutive_events():
    items = pa.table({S.ITEM_IDX: pa.array([0, 1, 2, 3], pa.int32()), S.CATEGORY: ["a.b", "a", None, "c"]})
    space = L.build(items)  # tags a, a.b, c
    # Two batches of (before, after) item pairs; -1 opens a sequence, item 2 has no tags.
    steps = [(np.array([-1, 0, 3]), np.array([0, 3, 1])), (np.array([1, 2, -1]), np.array([0, 1, 3]))]
    tr = L.TagTransitions.count(space, steps)
    dense = np.zeros((3, 3))
    for a in range(3):
        dense[a, tr.indices[tr.indptr[a]:tr.indptr[a + 1]]] = tr.data[tr.indptr[a]:tr.indptr[a + 1]]
    # a -> {c (0 -> 3), a and a.b (1 -> 0)}; a.b -> c; c -> a (3 -> 1)
    np.testing.assert_allclose(dense, [[1 / 3, 1 / 3, 1 / 3], [0, 0, 1], [1, 0, 0]], rtol=1e-6)
    after = tr.after(space, np.array([0, 2, -1, 3]))
    np.testing.assert_allclose(after[0], (dense[0] + dense[1]) / 2, rtol=1e-6)  # averaged over item 0's tags
    assert not after[1].any() and not after[2].any()  # untagged item, no event
    np.testing.assert_allclose(after[3], dense[2])


def test_config_paths_are_made_absolute_and_nothing_else(tmp_path, monkeypatch):
    from interest.train.loop import absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").mkdir()
    cfg = TagsConfig(embeddings="store", encoder="org/hub-model", separator=".")
    absolute_paths(cfg)
    assert cfg.embeddings == str(tmp_path / "store")
    assert cfg.encoder == "org/hub-model"  # not a local folder: a hub name, left alone
    assert cfg.separator == "."  # names the working directory, but is not a path


def test_config_errors():
    with pytest.raises(ConfigError, match="needs embeddings"):
        TagsConfig(mode="cached")
    with pytest.raises(ConfigError, match="mode must be one of"):
        TagsConfig(mode="zero", embeddings="x")
    cfg = C.from_dict(TagsConfig, {"embeddings": "x", "train": {"epochs": 2}})
    assert cfg.train.metric == "map" and cfg.train.epochs == 2  # partial nesting keeps the task's defaults


def test_embedding_cache_skips_unchanged_items(ray_start_4_cpus, prepared_small, tiny_encoder, tmp_path):
    from interest.text.embed import EmbedConfig, embed_items, item_vectors

    cfg = EmbedConfig(encoder=str(tiny_encoder), batch_size=64)
    store = str(tmp_path / "store")
    first = embed_items(str(prepared_small), store, cfg)
    assert first["embedded"] == first["items"] > 0
    again = embed_items(str(prepared_small), store, cfg)
    assert again["embedded"] == 0 and again["already_embedded"] == first["items"]
    items = pq.read_table(prepared_small / "items")
    titles = items.column(S.TITLE).to_pylist()
    titles[3] = titles[3] + " deluxe"
    changed = items.set_column(items.column_names.index(S.TITLE), S.TITLE, pa.array(titles))
    pq.write_table(changed, tmp_path / "items.parquet")
    third = embed_items(str(tmp_path / "items.parquet"), store, cfg)
    assert third["embedded"] == 1
    model_id = E.resolve(str(tiny_encoder))[0]
    old, found_old = item_vectors(store, model_id, items)
    new, found_new = item_vectors(store, model_id, changed)
    assert found_old.all() and found_new.all()
    assert np.allclose(np.linalg.norm(new, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(old[3], new[3]) and np.allclose(np.delete(old, 3, 0), np.delete(new, 3, 0))


N_GROUPS, PER_GROUP = 8, 5


@pytest.fixture(scope="module")
def planted(ray_start_4_cpus, tmp_path_factory):
    """Users browse a few random categories, then category g, then g+1, then g+2: the
    tags of the later window are the category after the user's latest one, which is
    never among the user's own tags, so a model must learn the step from the history."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    names = ["garden", "kitchen", "toys", "books", "sports", "beauty", "music", "tools"]
    item_ids = [f"g{g}i{j}" for g in range(N_GROUPS) for j in range(PER_GROUP)]
    titles = [f"{['small', 'large', 'red', 'blue', 'classic'][j]} {names[g]} thing" for g in range(N_GROUPS)
              for j in range(PER_GROUP)]
    rows = []
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    for u in range(400):
        g = u % N_GROUPS
        others = [c for c in range(N_GROUPS) if (c - g) % N_GROUPS > 3]
        groups = [*rng.choice(others, 3), g, (g + 1) % N_GROUPS, (g + 2) % N_GROUPS]  # history, valid, test
        for t, group in enumerate(groups):
            item = f"g{group}i{rng.integers(PER_GROUP)}"
            rows.append((f"u{u}", item, ["view", "cart", "buy"][rng.integers(3)], start + dt.timedelta(hours=t)))
    items = {S.ITEM_ID: item_ids, S.TITLE: titles,
             S.CATEGORY: [names[g] for g in range(N_GROUPS) for _ in range(PER_GROUP)]}
    return {**prepare_planted(root, items, rows, titles + names + list(S.BEHAVIORS)), "names": names}


# finetune on 2 workers: DDP fails on encoder parameters the head never uses (BERT's pooler).
@pytest.mark.parametrize("mode,epochs,lr,workers", [
    ("cached", 30, 0.01, 1),
    pytest.param("finetune", 20, 0.003, 2, marks=pytest.mark.nightly),  # long: `make test-nightly`
])
def test_mode_learns_planted_tags_and_scores_with_evidence(planted, mode, epochs, lr, workers):
    from interest.evaluate.harness import evaluate
    from interest.score.batch import score
    from interest.train.loop import fit

    run = planted["root"] / f"run_{mode}"
    cfg = {"mode": mode, "embeddings": str(planted["store"]), "encoder": str(planted["encoder"]),
           "tag_source": "whole", "valid_share": 0.2, "encoder_lr": lr,  # a random tiny encoder needs big steps
           "train": {"epochs": epochs, "lr": lr, "batch_size": 32, "patience": epochs}}
    result = fit("tags", str(planted["prepared"]), str(run), cfg, num_workers=workers)
    assert result.error is None
    results = evaluate(str(run), str(planted["prepared"]), per_user=True)
    assert_per_user_matches(results, "map")
    model, history = results["model"]["map"], results["history"]["map"]
    assert results["model"]["users"] == 400
    # Chance: ~0.3; the history baseline .15. Finetune runs of these settings gave mAP .743,
    # .813 and .857 with seeds 0-2 (rounded training shapes, activation checkpointing).
    assert model > 0.7 and model > history + 0.3, (model, history)

    out = planted["root"] / f"scores_{mode}"
    report = score(str(run), str(planted["prepared"]), str(out), top_k=3)
    assert 0.1 <= report["temperature"] <= 10
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 400 * 3 and all(0.0 <= r["probability"] <= 1.0 for r in rows)
    names = planted["names"]
    top = {r[S.USER_ID]: r for r in rows if r["rank"] == 1}
    # From everything the user did (a longer history than in training), the next step;
    # chance is 1 in 8 (50 users, sd 7). Runs differ (the workers' shards do): 102, 159
    # and 187 users in three finetune runs, so the bar is well above chance, below those.
    assert sum(top[f"u{u}"][S.TAG] == names[(u + 3) % N_GROUPS] for u in range(400)) > 90
    carried = 0
    for r in rows:  # evidence: items of the user's history that carry the tag, or where none does, others
        carrying = [e for e in r["evidence"] if names[int(e[1:].split("i")[0])] == r[S.TAG]]
        assert 1 <= len(r["evidence"]) <= 3 and carrying in (r["evidence"], [])
        carried += bool(carrying)
    assert carried > 0.1 * len(rows)


def _planted_cfg(planted, mode: str, **train) -> dict:
    return {"mode": mode, "embeddings": str(planted["store"]), "encoder": str(planted["encoder"]),
            "tag_source": "whole", "valid_share": 0.2, "model": {"dropout": 0.0},
            "train": {"batch_size": 32, "refit": 0, **train}}


def test_a_step_that_cannot_fit_its_memory_fails_before_training(planted):
    """Issue 20: finetune workers grew to 10 GB and were killed at epoch 4; a run whose
    settings cannot fit now fails on the driver, saying what to lower."""
    from interest.train.loop import check, fit

    cfg = _planted_cfg(planted, "finetune", memory_mb=1)
    with pytest.raises(ConfigError, match=r"one user's training activations need about .* MB \(text_max_length=128 "
                                          r"tokens .*\), more than train.memory_mb=1: raise train.memory_mb"):
        check("tags", str(planted["prepared"]), cfg, 2)
    cfg = _planted_cfg(planted, "finetune", memory_mb=10 ** 8, batch_size=10 ** 6)  # a million users a step
    with pytest.raises(ConfigError, match="lower train.memory_mb or --num-workers"):
        fit("tags", str(planted["prepared"]), str(planted["root"] / "run_too_big"), cfg, num_workers=2)


@pytest.mark.parametrize("mode", ["cached", "finetune"])
def test_micro_batches_sum_to_the_whole_batch_gradient(planted, mode):
    """A step of 32 users in micro-batches (train.memory_mb below the batch's estimate)
    accumulates the gradient of the whole batch's mean loss."""
    import torch

    from interest.tasks.tags.task import TagsTask
    from interest.train.loop import micro_batch, summed_gradients

    task = TagsTask()
    cfg = C.from_dict(TagsConfig, _planted_cfg(planted, mode, memory_mb=1 if mode == "cached" else 8))
    meta = task.load_meta(cfg, str(planted["prepared"]))
    micro = micro_batch(task, cfg, meta)
    assert 1 < micro < 32
    torch.manual_seed(0)
    model = task.build_model(cfg, meta)
    if mode == "finetune":
        model.encoder.config.hidden_dropout_prob = model.encoder.config.attention_probs_dropout_prob = 0.0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    table = pq.read_table(planted["prepared"] / "sequences", columns=task.train_columns()).slice(0, 32)
    batch = {k: table.column(k).to_numpy(zero_copy_only=False) for k in task.train_columns()}
    got = []
    for size in (32, micro):
        np.random.seed(1)  # the same random cuts of the users' histories
        model.zero_grad(set_to_none=True)
        flat, count, total = summed_gradients(task, model, batch, cfg, meta, torch.device("cpu"), size, params)
        got.append((flat / count, count, total / count))
    (whole, n_whole, loss_whole), (parts, n_parts, loss_parts) = got
    assert n_whole == n_parts > 32 and loss_parts == pytest.approx(loss_whole, rel=1e-5)
    assert whole.abs().max() > 0
    torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-6)


def test_finetune_memory_per_worker_is_bounded_and_flat_over_epochs(planted):
    """Issue 20: each finetune worker's peak rose from epoch to epoch. Measured in each
    worker (its resident set's high-water mark, reset every epoch), the peaks of a
    micro-batched finetune run stay under the run's own estimate and do not grow."""
    from interest.tasks.tags.task import TagsTask
    from interest.train import checkpoint as ckpt
    from interest.train.loop import fit, worker_mb

    cfg = _planted_cfg(planted, "finetune", memory_mb=4, epochs=4, patience=4, lr=0.003)
    cfg["encoder_lr"] = 0.003
    result = fit("tags", str(planted["prepared"]), str(planted["root"] / "run_memory"), cfg, num_workers=2)
    assert result.error is None
    peaks = np.asarray(ckpt.load_state(result.checkpoint.path)["peak_mb"])  # (epochs, workers)
    assert peaks.shape == (4, 2) and result.metrics["peak_mb"] == peaks[-1].max()
    task = TagsTask()
    tcfg = C.from_dict(TagsConfig, cfg)
    meta = task.load_meta(tcfg, str(planted["prepared"]))
    ceiling = worker_mb(task, tcfg, meta, task.build_model(tcfg, meta))
    assert (peaks < ceiling).all(), (peaks, ceiling)
    # After the first epoch (which allocates what every later one reuses), no growth.
    assert (peaks[2:] <= peaks[1] * 1.03 + 16).all(), peaks
