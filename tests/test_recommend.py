"""Task ``recommend``: multi-target metrics against brute force, a planted checkerboard
learned by the two-tower model (through Ray Train DDP) and by the closed-form models,
exclusions in the scored output, and a cold item reached through its text."""

import datetime as dt

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import assert_per_user_matches, prepare_planted
from interest import schemas as S
from interest.config import ConfigError
from interest.evaluate.metrics import top_k_sums
from interest.tasks.recommend.model import RecommendModelConfig
from interest.tasks.recommend.task import RecommendConfig

N_GROUPS, PER_GROUP, EVENTS = 8, 12, 10  # fewer events than items: some of the group is always unseen
NAMES = ["garden", "kitchen", "toys", "books", "sports", "beauty", "music", "tools"]


@pytest.mark.parametrize("sparse", [False, True])
def test_top_k_sums_match_brute_force(sparse):
    rng = np.random.default_rng(0)
    scores = torch.as_tensor(rng.standard_normal((30, 50)), dtype=torch.float32)
    scores[:, 7] = scores[:, 8] = 0.5  # ties: they count against the target
    if sparse:  # item-item scores: most items tie at 0
        scores = torch.where(scores > -0.5, scores.round() + 1, torch.zeros(()))
    targets = [rng.choice(50, size=rng.integers(0, 6), replace=False) for _ in range(30)]
    seen = [np.setdiff1d(rng.choice(50, size=5, replace=False), t) for t in targets]
    got = top_k_sums(scores, targets, seen, (5, 20), chunk=7)
    want = {"recall@5": 0.0, "ndcg@5": 0.0, "recall@20": 0.0, "ndcg@20": 0.0}
    for u in range(30):
        if not len(targets[u]):
            continue
        s = scores[u].numpy()
        # A target's rank: the other unseen items scored at least as high.
        ranks = [sum(s[i] >= s[t] for i in range(50) if i != t and i not in set(seen[u])) for t in targets[u]]
        for k in (5, 20):
            idcg = sum(1 / np.log2(r + 2) for r in range(min(k, len(targets[u]))))
            want[f"recall@{k}"] += sum(r < k for r in ranks) / len(targets[u])
            want[f"ndcg@{k}"] += sum(1 / np.log2(r + 2) for r in ranks if r < k) / idcg
    assert got["users"] == sum(len(t) > 0 for t in targets)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_bad_configuration_is_named():
    with pytest.raises(ConfigError, match="model.kind"):
        RecommendConfig(model=RecommendModelConfig(kind="svd"))
    with pytest.raises(ConfigError, match="exclude"):
        RecommendConfig(exclude="viewed")
    with pytest.raises(ConfigError, match="multiple of model.heads"):
        RecommendConfig(model=RecommendModelConfig(layers=1, dim=30, heads=4))


def test_self_attention_layers_let_history_order_matter_and_keep_empty_users_finite():
    from interest.tasks.recommend.model import TwoTower

    torch.manual_seed(0)
    items = torch.tensor([[0, 3, 4, 5], [0, 5, 4, 3], [0, 0, 0, 0]])
    behaviors = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]])
    for layers in (0, 2):
        model = TwoTower(10, RecommendModelConfig(dim=16, heads=2, layers=layers, dropout=0.0)).eval()
        scores = model.scores(items, behaviors)
        assert scores.shape == (3, 10) and torch.isfinite(scores).all()
        # The same items in another order differ through the recency embeddings alone.
        assert not torch.allclose(scores[0], scores[1])


@pytest.fixture(scope="module")
def checkerboard(ray_start_4_cpus, tmp_path_factory):
    """Users in 8 groups each take up items of their own group only; one more item per
    group is in the catalogue with a title of its group and no events at all (cold)."""
    root = tmp_path_factory.mktemp("checkerboard")
    rng = np.random.default_rng(0)
    words = ["small", "large", "red", "blue", "classic", "new", "old", "soft", "big", "tiny", "warm", "cool", "fresh"]
    ids, titles, cats = [], [], []
    for g in range(N_GROUPS):
        for j in range(PER_GROUP + 1):  # item PER_GROUP of each group is the cold one
            ids.append(f"g{g}i{j}")
            titles.append(f"{words[j]} {NAMES[g]} thing")
            cats.append(NAMES[g])
    rows = []
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    for u in range(400):
        g = u % N_GROUPS
        for t, j in enumerate(rng.permutation(PER_GROUP)[:EVENTS]):
            behavior = ["view", "cart", "buy"][rng.integers(3)]
            rows.append((f"u{u}", f"g{g}i{j}", behavior, start + dt.timedelta(hours=t)))
    data = prepare_planted(root, {S.ITEM_ID: ids, S.TITLE: titles, S.CATEGORY: cats}, rows, titles + NAMES)
    vocab = pq.read_table(data["prepared"] / "vocab" / "items.parquet").to_pydict()
    index = dict(zip(vocab[S.ITEM_ID], vocab[S.ITEM_IDX]))
    return {**data, "index": index, "events": rows}


def _group(item_id: str) -> int:
    return int(item_id[1:].split("i")[0])


def _check_scores(rows, events, exclude: str, in_group: float):
    """Top-1 of at least ``in_group`` of the users is of their group (chance: 1 in 8);
    excluded items never appear."""
    bought = {(u, i) for u, i, b, _ in events if b == "buy"}
    seen = {(u, i) for u, i, _, _ in events}
    banned = {"bought": bought, "seen": seen}[exclude]
    assert not [r for r in rows if (r[S.USER_ID], r[S.ITEM_ID]) in banned]
    top = [r for r in rows if r["rank"] == 1]
    assert len(top) == 400
    assert sum(_group(r[S.ITEM_ID]) == int(r[S.USER_ID][1:]) % N_GROUPS for r in top) >= in_group * 400


def _check_evidence(rows, events):
    """Every model row has 1-3 evidence items, all from the user's own history."""
    history = {}
    for u, i, _, _ in events:
        history.setdefault(u, set()).add(i)
    model = [r for r in rows if r[S.SOURCE] == "model"]
    assert model and all(1 <= len(r[S.EVIDENCE]) <= 3 for r in model)
    assert all(set(r[S.EVIDENCE]) <= history[r[S.USER_ID]] for r in model)


def _planted_cause(checkerboard, run) -> float:
    """Users whose history joins two groups' users (a planted cause for each group): the
    share of the top 4 rows whose evidence is all from the recommended item's group."""
    from interest.train.checkpoint import load_model

    task, cfg, model, _, meta = load_model(str(run), str(checkerboard["prepared"]))
    table = pq.read_table(checkerboard["prepared"] / "sequences", columns=task.train_columns()).sort_by("user_idx")
    batch = {k: v.to_numpy(zero_copy_only=False) for k, v in zip(table.column_names, table.columns)}
    by_id = {u: r for r, u in enumerate(batch[S.USER_ID])}
    pairs = [(by_id[f"u{u}"], by_id[f"u{u + 1}"]) for u in range(0, 80, 2)]  # groups u % 8 and (u + 1) % 8
    mixed = {c: np.empty(len(pairs), object) for c in ("items", "behaviors", "ts")}
    for n, (a, b) in enumerate(pairs):
        for c in mixed:
            mixed[c][n] = np.concatenate([batch[c][a], batch[c][b]])
    lengths = np.array([len(x) for x in mixed["items"]], np.int32)
    mixed.update({"user_idx": np.arange(len(pairs)), S.USER_ID: np.array([f"m{n}" for n in range(len(pairs))],
                                                                         object),
                  "n_train": lengths, "n_valid": np.zeros_like(lengths), "n_test": np.zeros_like(lengths)})
    rows = task.score(model, mixed, cfg, meta, torch.device("cpu"), top_k=4).to_pylist()
    assert len(rows) == 4 * len(pairs)
    return np.mean([all(_group(e) == _group(r[S.ITEM_ID]) for e in r[S.EVIDENCE]) and len(r[S.EVIDENCE]) > 0
                    for r in rows])


def test_two_tower_learns_groups_and_reaches_cold_items_by_text(checkerboard):
    from interest.evaluate.harness import evaluate
    from interest.score.batch import score
    from interest.train.checkpoint import load_model
    from interest.train.loop import fit

    run = checkerboard["root"] / "run_two_tower"
    cfg = {"embeddings": str(checkerboard["store"]), "encoder": str(checkerboard["encoder"]),
           "model": {"dim": 32, "id_dropout": 0.3},
           "train": {"epochs": 25, "lr": 0.01, "batch_size": 64, "patience": 25}}
    result = fit("recommend", str(checkerboard["prepared"]), str(run), cfg, num_workers=2)
    assert result.error is None
    results = evaluate(str(run), str(checkerboard["prepared"]), baselines=("popularity", "itemknn", "ease"),
                       per_user=True)
    assert_per_user_matches(results, "recall@20")
    # Each test user has its group's unseen items (3 of them, one the target) among ~95 candidates.
    for method in ("model", "ease", "itemknn"):
        assert results[method]["recall@10"] > 0.9, (method, results[method])
    assert results["popularity"]["recall@10"] < 0.5
    assert results["model"]["users"] == 400

    out = checkerboard["root"] / "scores_two_tower"
    score(str(run), str(checkerboard["prepared"]), str(out), top_k=5)
    _check_scores(pq.read_table(out).to_pylist(), checkerboard["events"], "bought", 0.75)
    _check_evidence(pq.read_table(out).to_pylist(), checkerboard["events"])
    # Two interests in one history: a recommendation of one group is explained by that
    # group's items (chance, with each group half the history: 1 in 8 for three items).
    assert _planted_cause(checkerboard, run) > 0.8

    # The cold items have no events: only their text can place them with their group.
    task, tcfg, model, _, meta = load_model(str(run), str(checkerboard["prepared"]))
    cold_ids = [f"g{g}i{PER_GROUP}" for g in range(N_GROUPS)]
    cold_idx = torch.as_tensor([checkerboard["index"][i] for i in cold_ids])
    assert meta.extra["train_counts"][cold_idx.numpy()].sum() == 0
    batch = {k: v.to_numpy(zero_copy_only=False) for k, v in
             zip(task.train_columns(), pq.read_table(checkerboard["prepared"] / "sequences",
                                                     columns=task.train_columns()).columns)}
    users = task.users(batch, tcfg, meta, "score")
    with torch.no_grad():
        best_cold = task.scores(model, users, tcfg, torch.device("cpu"))[:, cold_idx].argmax(1).numpy()
    groups = np.array([int(u[1:]) % N_GROUPS for u in batch[S.USER_ID][users.rows]])
    assert (best_cold == groups).mean() > 0.5  # chance: 1 in 8 (a tiny random encoder: 0.75 seen)


@pytest.mark.timeout(300)
def test_ddp_workers_skip_together_a_step_where_one_has_nothing_to_learn(checkerboard):
    """With 90% of the items held out, about 40% of the users have no warm next item: at
    batches of one user, one worker often has nothing to learn while the other has. Such
    a worker runs no forward pass; if the other went on to DDP's gradient all-reduce it
    would wait for ever (this hung before the workers agreed to skip together)."""
    from interest.train.loop import fit

    result = fit("recommend", str(checkerboard["prepared"]), str(checkerboard["root"] / "run_skip"),
                 {"holdout_items": 0.9, "model": {"dim": 8},
                  "train": {"epochs": 1, "batch_size": 1, "refit": 0, "eval_batch_size": 64}}, num_workers=2)
    assert result.error is None
    assert 0 < result.metrics["steps"] < 200  # 400 users, 200 a worker: some steps were skipped


def test_closed_form_model_is_chosen_on_validation_and_matches_its_baseline(checkerboard):
    from interest.evaluate.harness import evaluate
    from interest.score.batch import score
    from interest.train import checkpoint as ckpt
    from interest.train.checkpoint import latest_checkpoint
    from interest.train.loop import fit

    run = checkerboard["root"] / "run_ease"
    result = fit("recommend", str(checkerboard["prepared"]), str(run),
                 {"model": {"kind": "ease"}, "exclude": "seen"}, num_workers=2)
    assert result.error is None
    state = ckpt.load_state(latest_checkpoint(str(run)))
    assert state["fitted"]["lambda"] in state["fitted"]["lambda_searched"]
    results = evaluate(str(run), str(checkerboard["prepared"]), baselines=("popularity", "ease"))
    # The same lambda, chosen on the same users, refitted on the same events: the model
    # and the baseline are one and the same.
    assert results["ease"]["lambda"] == state["fitted"]["lambda"]
    assert results["model"]["recall@20"] == pytest.approx(results["ease"]["recall@20"], abs=1e-9)
    assert results["model"]["recall@10"] > 0.9

    out = checkerboard["root"] / "scores_ease"
    score(str(run), str(checkerboard["prepared"]), str(out), top_k=3)
    _check_scores(pq.read_table(out).to_pylist(), checkerboard["events"], "seen", 0.9)
    _check_evidence(pq.read_table(out).to_pylist(), checkerboard["events"])
    assert _planted_cause(checkerboard, run) > 0.95  # EASE's drops are its exact weights


def test_held_out_items_are_never_validation_targets(checkerboard):
    """Issue 19: validation counted held-out (cold) items as targets, so early stopping
    and the closed-form models' search saw items the model cannot learn."""
    from interest.tasks.recommend.task import RecommendTask

    task = RecommendTask()
    cfg = RecommendConfig(holdout_items=0.3)
    meta = task.load_meta(cfg, str(checkerboard["prepared"]))
    cold = meta.extra["cold"]
    batch = {k: v.to_numpy(zero_copy_only=False) for k, v in
             zip(task.train_columns(), pq.read_table(checkerboard["prepared"] / "sequences",
                                                     columns=task.train_columns()).columns)}
    valid, test = task.users(batch, cfg, meta, "valid"), task.users(batch, cfg, meta, "test")
    assert valid is not None and all(len(t) and not cold[t].any() for t in valid.targets)
    # The test keeps them, for the cold-start rows; so the held-out share does reach targets.
    assert any(cold[t].any() for t in test.targets)
