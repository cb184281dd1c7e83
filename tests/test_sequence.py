"""Task ``sequence``: the model's contract, a planted pattern learned through Ray Train
DDP, resumption after a kill, and configuration errors caught before workers start."""

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import assert_per_user_matches
from interest.config import ConfigError
from interest.tasks.base import TrainConfig
from interest.tasks.losses import full_softmax_loss, sampled_softmax_loss
from interest.tasks.sequence.model import SequenceModel, SequenceModelConfig
from interest.tasks.sequence.task import SequenceConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["sasrec", "gru"])
def test_model_is_causal_and_finite_with_padding(kind):
    torch.manual_seed(0)
    model = SequenceModel(30, SequenceModelConfig(kind=kind, dim=16, layers=2, heads=2, dropout=0.0, max_len=8)).eval()
    items = torch.tensor([[0, 0, 0, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]])
    behaviors = torch.ones_like(items) * (items > 0)
    gaps = torch.ones_like(items)
    h = model(items, behaviors, gaps)
    assert h.shape == (2, 8, 16) and torch.isfinite(h).all()
    assert (h[0, :3] == 0).all()  # padding positions carry nothing
    changed = items.clone()
    changed[:, -1] = 9  # a later event must not change earlier states
    h2 = model(changed, behaviors, gaps)
    assert torch.allclose(h[:, :-1], h2[:, :-1], atol=1e-5)
    assert not torch.allclose(h[:, -1], h2[:, -1])
    assert model.item_scores(h[:, -1]).shape == (2, 30)


def test_positions_and_gaps_start_at_the_items_scale():
    # At nn.Embedding's N(0, 1) they were 8x the items and drowned them (see the model).
    model = SequenceModel(5000, SequenceModelConfig(dim=64))
    item_std = model.item.weight[1:].std().item()
    for emb in (model.pos, model.gap):
        assert emb.weight[1:].std().item() == pytest.approx(item_std, rel=0.2)
    assert model.behavior.weight[1:].std().item() > 4 * item_std  # kept: the next behaviour reads them
    assert not model.item.weight[0].any() and not model.behavior.weight[0].any() and not model.gap.weight[0].any()


@pytest.mark.parametrize("types", [1, 3])
def test_a_single_behaviour_type_starts_its_embedding_at_zero(types):
    from interest.tasks.base import Meta
    from interest.tasks.sequence.task import SequenceTask

    meta = Meta(50, 10, {"transitions": np.zeros((6, 5), np.float32), "behavior_types": types})
    model = SequenceTask().build_model(SequenceConfig(preset="tiny"), meta)
    assert model.behavior.weight.any() == (types > 1)


def test_text_vectors_tie_items_with_the_same_text():
    """With item text vectors, two items with no id training but the same text share an
    embedding, and their text moves the states and scores of the items that follow."""
    torch.manual_seed(0)
    vectors = torch.randn(30, 12)
    vectors[7] = vectors[3]  # items 4 and 8 (1-based ids) have the same text
    model = SequenceModel(30, SequenceModelConfig(dim=16, layers=1, heads=1, dropout=0.0, max_len=4), vectors).eval()
    with torch.no_grad():
        model.item.weight.zero_()  # ids carry nothing: only the text tells items apart
    table = model.item_table()
    assert torch.equal(table[0], torch.zeros(16))  # padding stays empty
    assert torch.allclose(table[4], table[8]) and not torch.allclose(table[4], table[5])
    gaps, behaviors = torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)
    h4 = model(torch.tensor([[1, 2, 3, 4]]), behaviors, gaps)[:, -1]
    h8 = model(torch.tensor([[1, 2, 3, 8]]), behaviors, gaps)[:, -1]
    h5 = model(torch.tensor([[1, 2, 3, 5]]), behaviors, gaps)[:, -1]
    assert torch.allclose(h4, h8, atol=1e-6) and not torch.allclose(h4, h5)
    assert model.item_scores(h4).shape == (1, 30)
    assert "item_vectors" not in model.state_dict()  # the vector store holds them, not the checkpoint


def test_sampled_softmax_is_finite_and_ignores_duplicate_targets():
    torch.manual_seed(0)
    states = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(50, 8)
    targets = torch.tensor([1, 1, 2, 3, 4, 5])
    loss = sampled_softmax_loss(states, targets, weight, torch.log(torch.full((50,), 1 / 50)), 16)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(states.grad).all()


def test_full_softmax_matches_cross_entropy_in_value_and_gradients():
    torch.manual_seed(0)
    states = torch.randn(70, 8, dtype=torch.float64, requires_grad=True)  # 70 rows: a partial last chunk
    weight = torch.randn(40, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 40, (70,))
    (3 * full_softmax_loss(states, targets, weight, chunk=16)).backward()  # the outer scale must reach both grads
    got = states.grad.clone(), weight.grad.clone()
    states.grad = weight.grad = None
    (3 * torch.nn.functional.cross_entropy(states @ weight.t(), targets)).backward()
    assert torch.allclose(got[0], states.grad) and torch.allclose(got[1], weight.grad)
    with torch.no_grad():
        assert torch.isclose(full_softmax_loss(states, targets, weight),
                             torch.nn.functional.cross_entropy(states @ weight.t(), targets))


def test_full_softmax_under_bf16_autocast_stays_close_to_float32():
    torch.manual_seed(0)
    states = torch.randn(300, 16, requires_grad=True)
    weight = (0.3 * torch.randn(500, 16)).requires_grad_()
    targets = torch.randint(0, 500, (300,))
    full_softmax_loss(states, targets, weight).backward()
    exact, exact_grads = full_softmax_loss(states, targets, weight).item(), (states.grad.clone(), weight.grad.clone())
    states.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = full_softmax_loss(states, targets, weight)
    loss.backward()
    assert loss.dtype == torch.float32 and abs(loss.item() - exact) < 1e-2 * exact
    for got, want in zip((states.grad, weight.grad), exact_grads):
        assert got.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), 0) > 0.99

def test_behavior_transitions_count_consecutive_training_events(tmp_path):
    from interest.tasks.sequence.task import behavior_transitions

    (tmp_path / "sequences").mkdir()
    # view=0, cart=3, buy=4; events past n_train (validation, test) are not counted.
    table = pa.table({"behaviors": pa.array([[0, 3, 4, 0], [0, 0], [3]], pa.list_(pa.int8())),
                      "n_train": pa.array([3, 2, 1], pa.int32())})
    pq.write_table(table, tmp_path / "sequences" / "part-0.parquet", row_group_size=2)  # two batches
    counts = np.ones((6, 5))
    for last, nxt in [(0, 0), (1, 3), (4, 4), (0, 0), (1, 0), (0, 3)]:  # (last + 1, next); 0: no event before
        counts[last, nxt] += 1
    expected = np.log(counts / counts.sum(1, keepdims=True))
    transitions, types = behavior_transitions(str(tmp_path))
    assert np.allclose(transitions, expected) and types == 3


def test_item_transitions_count_consecutive_events_up_to_a_split(tmp_path):
    from interest.tasks.sequence.transitions import ItemTransitions

    (tmp_path / "sequences").mkdir()
    table = pa.table({"items": pa.array([[0, 1, 2, 1], [0, 1], [2, 0, 1]], pa.list_(pa.int32())),
                      "n_train": pa.array([2, 2, 1], pa.int32()), "n_valid": pa.array([1, 0, 1], pa.int32()),
                      "n_test": pa.array([1, 0, 1], pa.int32())})
    pq.write_table(table, tmp_path / "sequences" / "part-0.parquet", row_group_size=2)  # two batches

    def dense(t: ItemTransitions) -> np.ndarray:
        out = np.zeros((3, 3))
        owner, cols, probs = t.rows(np.arange(3))
        out[owner, cols] = probs
        return out

    # train: 0->1 twice; + valid: 1->2, 2->0; + test: 2->1, 0->1.
    assert np.allclose(dense(ItemTransitions.count(str(tmp_path), 3, "train")), [[0, 1, 0], [0, 0, 0], [0, 0, 0]])
    assert np.allclose(dense(ItemTransitions.count(str(tmp_path), 3, "valid")), [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    every = ItemTransitions.count(str(tmp_path), 3, "test")
    assert np.allclose(dense(every), [[0, 1, 0], [0, 0, 1], [.5, .5, 0]]) and every.pairs == 4

    # The mixture, against its definition; a user whose last item has no row keeps the
    # network's distribution (scaled), so its order.
    scores = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    last = np.array([2, 1, 0])
    t = ItemTransitions.count(str(tmp_path), 3, "train")
    want = torch.log(0.8 * torch.softmax(scores, 1) + 0.2 * torch.as_tensor(dense(t)[last], dtype=torch.float32))
    assert torch.allclose(t.log_mix(scores, last, 0.2), want, atol=1e-6)
    far = t.log_mix(torch.tensor([[0.0, -200.0, -400.0]]), np.array([1]), 0.5)
    assert torch.isfinite(far).all() and far[0, 0] > far[0, 1] > far[0, 2]  # no underflow to ties at -inf


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="loss must be one of"):
        SequenceConfig(loss="nope")
    with pytest.raises(ConfigError, match="unknown preset"):
        SequenceConfig(preset="huge")
    with pytest.raises(ConfigError, match=r"transitions must be in \[0, 1\) or None"):
        SequenceConfig(transitions=1.0)
    with pytest.raises(ConfigError, match="train.precision must be fp32 or bf16"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match=r"train.plateau_decay must be in \(0, 1\], got 0"):
        TrainConfig(plateau_decay=0)
    with pytest.raises(ConfigError, match="train.valid_users must be >= 0"):
        TrainConfig(valid_users=-1)
    cfg = SequenceConfig(preset="tiny")
    assert cfg.model.dim == 16 and cfg.model.max_len == 20


def loop_events(path: Path, users: int = 320, loops: int = 8, loop_len: int = 4, repeats: int = 5) -> None:
    """Each user cycles through one of ``loops`` fixed item loops, starting anywhere in it."""
    rng = np.random.default_rng(0)
    rows = []
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    for u in range(users):
        loop = [f"L{u % loops}-{k}" for k in range(loop_len)]
        start = int(rng.integers(loop_len))
        for k in range(loop_len * repeats + int(rng.integers(loop_len))):
            rows.append((f"u{u}", loop[(start + k) % loop_len], "view", t0 + dt.timedelta(minutes=k)))
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(list(zip(*rows)), names=["user_id", "item_id", "behavior", "ts"]), path / "e.parquet")


@pytest.fixture(scope="module")
def loops_prepared(tmp_path_factory, ray_start_4_cpus):
    from interest.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("loops")
    loop_events(root / "raw")
    prepare(PrepareConfig(input=str(root / "raw"), out=str(root / "prepared")))
    return root / "prepared"


TINY = {"preset": "tiny", "mask_seen": False, "train": {"epochs": 10, "batch_size": 8, "lr": 0.03, "patience": 10}}


@pytest.mark.ray
@pytest.mark.parametrize("kind,precision", [
    ("sasrec", "fp32"),
    pytest.param("gru", "bf16", marks=pytest.mark.nightly),  # long: `make test-nightly`
])
def test_ddp_training_learns_planted_loops(loops_prepared, tmp_path, kind, precision, monkeypatch):
    from interest.evaluate import harness
    from interest.evaluate.harness import evaluate
    from interest.evaluate.metrics import Protocol
    from interest.train import checkpoint as ckpt
    from interest.train.loop import fit

    cfg = {**TINY, "model": {"kind": kind}, "train": {**TINY["train"], "precision": precision}}
    result = fit("sequence", str(loops_prepared), str(tmp_path / "run"), cfg, num_workers=2)
    assert result.error is None
    assert result.metrics["valid/users"] == 320  # both workers' shards are counted
    # Issue 19: the blend weights were chosen on the validation events with the refit
    # weights, which trained on them. The weights from before the refit are kept for it,
    # and evaluation collects the validation users with those, the test users with the rest.
    prerefit = ckpt.read_weights(result.checkpoint.path, ckpt.PREREFIT)
    refit = ckpt.read_weights(result.checkpoint.path, ckpt.BEST)
    assert not all(torch.equal(prerefit[k], refit[k]) for k in refit)
    used = {}
    collect = harness.collect

    def spy(task, model, cfg, meta, prepared, protocol, *args, **kwargs):
        used[protocol.split] = {k: v.clone() for k, v in model.state_dict().items()}
        return collect(task, model, cfg, meta, prepared, protocol, *args, **kwargs)

    monkeypatch.setattr(harness, "collect", spy)
    results = evaluate(str(tmp_path / "run"), str(loops_prepared), protocol=Protocol(mask_seen=False),
                       baselines=("popularity", "itemknn", "ease"), per_user=True)
    assert_per_user_matches(results, "ndcg@10")
    assert all(torch.equal(used["valid"][k], prerefit[k]) for k in prerefit)
    assert all(torch.equal(used["test"][k], refit[k]) for k in refit)
    # The next item of a loop is determined by the history.
    assert results["model"]["hr@1"] > 0.8
    assert results["model"]["hr@10"] > results["popularity"]["hr@10"]
    # Item-item baselines see which items go together, not their order: a loop's four
    # items tie, and the blend with the model (weight chosen on validation, 0 being the
    # model alone) keeps the order.
    for name in ("itemknn", "ease"):
        assert results[name]["users"] == 320 and results[name]["hr@1"] < 0.5
        blend = results[f"model+{name}"]
        assert 0 <= blend["weight"] < 1 and blend["hr@1"] > 0.8

    # Batch scoring from everything each user did: the next item of the user's loop on top.
    from interest.score.batch import score

    score(str(tmp_path / "run"), str(loops_prepared), str(tmp_path / "scores"), top_k=3)
    rows = pq.read_table(tmp_path / "scores").to_pylist()
    raw = pq.read_table(loops_prepared.parent / "raw").sort_by("ts").to_pylist()
    last = {r["user_id"]: r["item_id"] for r in raw}
    assert len(rows) == 320 * 3 and {r["next_behavior"] for r in rows} == {"view"}
    top = {r["user_id"]: r for r in rows if r["rank"] == 1}
    loop, step = zip(*(last[u][1:].split("-") for u in sorted(top)))
    expected = [f"L{g}-{(int(k) + 1) % 4}" for g, k in zip(loop, step)]
    assert sum(top[u]["item_id"] == e for u, e in zip(sorted(top), expected)) > 0.8 * 320
    # The planted cause of a loop's next item is the item before it, the user's last:
    # the strongest evidence of the top row.
    assert all(1 <= len(r["evidence"]) <= 3 for r in rows)
    assert sum(top[u]["evidence"][0] == last[u] for u in top) > 0.8 * 320
    by_user = {}
    for r in rows:
        by_user[r["user_id"]] = by_user.get(r["user_id"], 0.0) + r["probability"]
    assert all(0 < p <= 1 + 1e-5 for p in by_user.values())  # shares of one softmax over the catalogue


@pytest.mark.ray
def test_item_transitions_weight_is_chosen_on_validation_and_used_by_evaluation_and_scoring(loops_prepared, tmp_path):
    from interest.evaluate.harness import evaluate
    from interest.evaluate.metrics import Protocol
    from interest.score.batch import score
    from interest.tasks.sequence.task import TRANSITION_WEIGHTS
    from interest.train import checkpoint as ckpt
    from interest.train.loop import fit

    # One epoch at a rate too small to learn the loops: the network is near uniform, and
    # the counted transitions (each loop item has one successor) are what predicts.
    cfg = {**TINY, "train": {**TINY["train"], "epochs": 1, "lr": 1e-6, "refit": 0}}
    result = fit("sequence", str(loops_prepared), str(tmp_path / "run"), cfg, num_workers=1)
    assert result.error is None and result.metrics["chosen_valid"] > 0.9
    chosen = ckpt.load_state(result.checkpoint.path)["config"]["transitions"]  # written into the run
    assert chosen in TRANSITION_WEIGHTS and chosen > 0
    results = evaluate(str(tmp_path / "run"), str(loops_prepared), protocol=Protocol(mask_seen=False))
    assert results["model"]["transitions"] == chosen
    assert results["model"]["hr@1"] > 0.95 and results["network"]["hr@1"] < 0.5

    score(str(tmp_path / "run"), str(loops_prepared), str(tmp_path / "scores"), top_k=2)
    rows = pq.read_table(tmp_path / "scores").to_pylist()
    raw = pq.read_table(loops_prepared.parent / "raw").sort_by("ts").to_pylist()
    last = {r["user_id"]: r["item_id"] for r in raw}
    top = {r["user_id"]: r for r in rows if r["rank"] == 1}
    nxt = {u: "{}-{}".format(last[u].split("-")[0], (int(last[u].split("-")[1]) + 1) % 4) for u in top}
    assert len(top) == 320 and all(top[u]["item_id"] == nxt[u] for u in top)
    assert all(chosen < r["probability"] <= 1 for r in top.values())  # the mixture's probability


@pytest.mark.ray
def test_early_stopping_sees_the_network_alone_with_a_fixed_transitions_weight(loops_prepared, tmp_path):
    """Issue 19: the docs said early stopping sees the network alone, but with a fixed
    ``transitions=W`` it saw the mixture. Near-uniform network, exact transitions: the
    mixture would validate at hr@10 ~1."""
    from interest.train import checkpoint as ckpt
    from interest.train.loop import fit

    cfg = {**TINY, "transitions": 0.5, "train": {**TINY["train"], "epochs": 1, "lr": 1e-6, "refit": 0}}
    result = fit("sequence", str(loops_prepared), str(tmp_path / "run"), cfg, num_workers=1)
    assert result.error is None
    state = ckpt.load_state(result.checkpoint.path)
    assert state["config"]["transitions"] == 0.5 and state["best_valid"]["valid/hr@10"] < 0.9


def test_sampled_softmax_corrects_by_training_counts_only(loops_prepared):
    """Issue 19: the log-q correction of ``loss=sampled`` counted every split's events."""
    from interest.tasks.sequence.task import SequenceTask

    meta = SequenceTask().load_meta(SequenceConfig(loss="sampled"), str(loops_prepared))
    events = pq.read_table(loops_prepared / "events", columns=["item_idx", "split"]).to_pydict()
    items, split = np.asarray(events["item_idx"]), np.asarray(events["split"])
    assert (split > 0).any()
    assert meta.extra["train_counts"].tolist() == np.bincount(items[split == 0], minlength=meta.n_items).tolist()


def test_evaluation_reports_the_test_split_only(loops_prepared):
    """Issue 19: ``--split valid`` reported figures on the events that chose the epoch, the
    baselines' parameters and the blend weights (and with refit weights trained on them)."""
    from interest.evaluate.harness import evaluate
    from interest.evaluate.metrics import Protocol
    from ray_jobs.evaluate import build_parser

    with pytest.raises(ConfigError, match="evaluation reports the test split"):
        evaluate("no-run", str(loops_prepared), protocol=Protocol(split="valid"))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--run", "r", "--data", "d", "--split", "valid"])


@pytest.mark.ray
def test_validation_on_a_user_sample_and_the_rate_decays_at_plateaus(loops_prepared, tmp_path):
    from interest.tasks.base import uniform_hash
    from interest.train import checkpoint as ckpt
    from interest.train.loop import fit

    # Every event is a view: the next-behaviour accuracy is 1 from the first epoch on, so
    # the two epochs after it do not improve it and each halves the rate.
    cfg = {"preset": "tiny", "train": {"epochs": 3, "lr": 0.01, "metric": "behavior_acc", "plateau_decay": 0.5,
                                       "valid_users": 100}}
    result = fit("sequence", str(loops_prepared), str(tmp_path / "run"), cfg, num_workers=1)
    assert result.error is None
    # The same users every epoch: those first in hash order, about 100 of the 320.
    assert result.metrics["valid/users"] == (uniform_hash(np.arange(320)) < 100 / 320).sum()
    assert 60 < result.metrics["valid/users"] < 140
    state = torch.load(os.path.join(result.checkpoint.path, ckpt.OPTIMIZER), weights_only=True)
    assert ckpt.load_state(result.checkpoint.path)["best_epoch"] == 0
    assert [g["lr"] for g in state["param_groups"]] == pytest.approx([0.0025])


@pytest.mark.ray
@pytest.mark.nightly  # long: `make test-nightly` (README, Development)
def test_a_ddp_run_repeats_with_its_seed(loops_prepared, tmp_path):
    from interest.train import checkpoint as ckpt
    from interest.train.loop import fit

    cfg = {"preset": "tiny", "train": {"epochs": 2, "batch_size": 16, "refit": 0}}
    runs = [fit("sequence", str(loops_prepared), str(tmp_path / f"run{i}"), cfg, num_workers=2) for i in range(2)]
    a, b = (ckpt.read_weights(r.checkpoint.path) for r in runs)
    # The same shards in the same order on each worker: the same weights, not close ones.
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_requests_fail_before_workers_start(loops_prepared, tmp_path):
    from interest.io import InputError
    from interest.train.loop import check

    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        check("sequence", str(loops_prepared), {"train": {"epoch": 3}}, 2)
    with pytest.raises(ConfigError, match="unknown task 'tags2'"):
        check("tags2", str(loops_prepared), {}, 2)
    with pytest.raises(InputError, match="not a prepared dataset"):
        check("sequence", str(tmp_path), {}, 2)


def _epochs_done(run: Path) -> int:
    """Epochs of the newest readable checkpoint of ``run`` (0: none yet)."""
    from interest.train import checkpoint as ckpt

    done = 0
    for p in run.glob("checkpoint_*"):
        try:
            done = max(done, ckpt.load_state(str(p))["epoch"])
        except (OSError, ValueError):  # a checkpoint still being written
            pass
    return done


def _train_workers_since(started: float) -> list:
    """The Ray Train worker processes started since ``started`` (a test's own runs)."""
    import psutil

    return [p for p in psutil.process_iter(["cmdline", "create_time"])
            if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker") and p.info["create_time"] >= started - 1]


@pytest.mark.ray
def test_killed_run_resumes_from_its_checkpoint(loops_prepared, tmp_path):
    from interest.train import checkpoint as ckpt
    from interest.train.loop import fit

    run, started = tmp_path / "run", time.time()
    cmd = [sys.executable, "-m", "ray_jobs.train", "--task", "sequence", "--data", str(loops_prepared),
           "--out", str(run), "--num-workers", "1", "--num-cpus", "3", "--set", "preset=tiny",
           "--set", "train.epochs=200", "--set", "train.patience=200", "--set", "train.batch_size=16"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ""})
    deadline = time.time() + 180
    while time.time() < deadline and _epochs_done(run) < 2:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole local cluster of that job dies
    proc.wait()
    # Its training worker is not in that process group: until it notices that its node
    # is gone it trains on, and may write one more checkpoint (seen in CI: resumed from
    # epoch 3 with 2 counted). Kill it too before counting.
    for p in _train_workers_since(started):
        p.kill()
    time.sleep(1)
    done = _epochs_done(run)
    assert done >= 2
    result = fit("sequence", str(loops_prepared), str(run),
                 {"preset": "tiny", "train": {"epochs": done + 2, "patience": 200, "batch_size": 16, "refit": 1}},
                 num_workers=1)
    state = ckpt.load_state(result.checkpoint.path)
    # Resumed from the last checkpoint Ray had registered before the kill (the newest one
    # may have been written but not yet registered), not from scratch.
    assert 1 <= state["resumed_from"] <= done and state["epoch"] == done + 2
    # Then one epoch on training + validation events, whose weights evaluation and scoring load.
    assert state["refit"] == 1 and result.metrics["refit"] == 1
    best, last = ckpt.read_weights(result.checkpoint.path, ckpt.BEST), ckpt.read_weights(result.checkpoint.path)
    assert all(torch.equal(best[k], last[k]) for k in best)


@pytest.mark.ray
def test_a_training_worker_killed_mid_epoch_restarts_from_the_last_checkpoint(loops_prepared, tmp_path):
    """Issue 24: one DDP worker process dies under a live Ray Train controller (not the
    whole job); the controller restarts the worker group, which resumes from the last
    checkpoint, and the run finishes all its epochs."""
    import threading

    from interest.train import checkpoint as ckpt
    from interest.train.loop import fit

    run, started, killed = tmp_path / "run", time.time(), {}

    def kill_a_worker():
        deadline = time.time() + 240
        # A report reaches the controller when it polls; the third checkpoint on disk
        # means the first was taken (the worker waits while one report is pending), so
        # a restart has a checkpoint to resume from.
        while time.time() < deadline and _epochs_done(run) < 3:
            time.sleep(0.05)
        # Kill at once: a tiny epoch takes half a second, and a kill that lands after the
        # last epoch tests nothing (8 epochs and a 0.3 s pause made this test flaky).
        workers = _train_workers_since(started)
        if workers:
            workers[-1].kill()
            time.sleep(1)  # a checkpoint half-written at the kill lands (or never does)
            killed.update(pid=workers[-1].pid, after=_epochs_done(run), workers=len(workers))

    threading.Thread(target=kill_a_worker, daemon=True).start()
    epochs = 16
    result = fit("sequence", str(loops_prepared), str(run),
                 {"preset": "tiny", "train": {"epochs": epochs, "patience": epochs, "batch_size": 8}}, num_workers=2)
    assert killed.get("workers") == 2, killed  # one of this run's two workers was killed
    assert result.error is None
    state = ckpt.load_state(result.checkpoint.path)
    assert 1 <= state["resumed_from"] <= killed["after"] and state["epoch"] == epochs
