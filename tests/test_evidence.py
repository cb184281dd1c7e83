"""Evidence rules (interest.common.evidence): each model's leave-one-item-out drops against
running the model again without the item, where the rule says it is exact; the choice
of a row's evidence; and the evidence kept out of a withheld item's way."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from interest import schemas as S
from interest.common import evidence
from interest.common.events import drop_events
from interest.score.batch import withhold
from interest.tasks.recommend.model import ItemItem, RecommendModelConfig, TwoTower
from interest.tasks.sequence.model import SequenceModel, SequenceModelConfig

N_ITEMS, T = 30, 12


def _window(seqs: list[list[int]], t: int = T) -> torch.Tensor:
    out = torch.zeros(len(seqs), t, dtype=torch.long)
    for n, s in enumerate(seqs):
        out[n, t - len(s):] = torch.tensor(s, dtype=torch.long)
    return out


def _drops(found) -> dict[tuple[int, int], np.ndarray]:
    drops, owner, item = found
    return {(int(u), int(i)): d.numpy() for d, u, i in zip(drops, owner, item)}


def test_groups_are_each_users_distinct_items():
    group, owner, item = evidence.groups(_window([[3, 5, 3], [5]], 4))
    assert owner.tolist() == [0, 0, 1] and item.tolist() == [3, 5, 5]
    assert group.tolist() == [[-1, 0, 1, 0], [-1, -1, -1, 2]]


def test_two_tower_drop_is_exact_for_the_oldest_item():
    """Removing the oldest item's events moves no other event's recency: the pooling
    renormalised is the model run again without them."""
    torch.manual_seed(0)
    model = TwoTower(N_ITEMS, RecommendModelConfig(dim=16, max_len=T)).eval()
    seqs = [[4, 9, 9, 2, 7], [11, 3, 8]]
    targets = torch.tensor([[0, 5], [1, 2]])
    items = _window(seqs)
    drops = _drops(model.removal_drops(items, (items > 0).long(), targets))
    for u, seq in enumerate(seqs):
        rest = _window([seq[1:]])
        with torch.no_grad():
            full, table = model(items[u:u + 1], (items[u:u + 1] > 0).long())
            less, _ = model(rest, (rest > 0).long())
        exact = ((full - less) @ table[targets[u] + 1].t())[0].numpy()
        np.testing.assert_allclose(drops[u, seq[0]], exact, rtol=1e-4, atol=1e-5)
    assert set(drops) == {(0, 4), (0, 9), (0, 2), (0, 7), (1, 11), (1, 3), (1, 8)}


@pytest.mark.parametrize("kind", ["sasrec", "gru"])
def test_sequence_drop_is_exact_where_its_rule_says(kind):
    """SASRec: the latest item (the state of the event before it); GRU: any item of the
    last evidence.TAIL events, with the state before them kept."""
    torch.manual_seed(0)
    model = SequenceModel(N_ITEMS, SequenceModelConfig(kind=kind, dim=16, heads=2, layers=2, dropout=0.0,
                                                       max_len=T)).eval()
    seqs = [[6, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12], [13, 14, 13, 15]]
    targets = torch.tensor([[0, 4], [20, 21]])
    items = _window(seqs)
    ones = (items > 0).long()
    drops = _drops(model.removal_drops(items, ones, ones, targets))
    table = model.item_table().detach()
    for u, seq in enumerate(seqs):
        removed = seq[-1] if kind == "sasrec" else seq[-3]
        rest = [i for i in seq if i != removed]
        with torch.no_grad():
            full = model(items[u:u + 1], ones[u:u + 1], ones[u:u + 1])[:, -1]
            # SASRec: the window as it was, up to the event before; GRU: the padding the
            # recurrence read before the removed event stays (a window one shorter).
            w = _window([rest], T if kind == "sasrec" else T - 1)
            less = model(w, (w > 0).long(), (w > 0).long())[:, -1]
        exact = ((full - less) @ table[targets[u] + 1].t())[0].numpy()
        np.testing.assert_allclose(drops[u, removed], exact, rtol=1e-4, atol=1e-5)
    if kind == "gru":  # only the last TAIL events' items are candidates
        assert {i for u, i in drops if u == 0} == set(seqs[0][-evidence.TAIL:])


def test_item_item_drops_are_the_weights_dense_and_sparse():
    weights = torch.rand(6, 6)
    dense = ItemItem(6, dense=True).set(weights)
    sparse = ItemItem(6, dense=False).set(torch.where(weights > 0.5, weights, 0.0).to_sparse())
    rows, cols = torch.tensor([0, 2, 5, 3]), torch.tensor([1, 1, 4, 3])
    assert torch.equal(dense.weights(rows, cols), weights[rows, cols])
    assert torch.equal(sparse.weights(rows, cols), torch.where(weights > 0.5, weights, 0.0)[rows, cols])


def test_pick_takes_the_strongest_raising_items_and_never_leaves_a_history_without():
    owner = torch.tensor([0, 0, 0, 0, 1, 1])
    item = torch.tensor([1, 2, 3, 4, 5, 6])  # item + 1
    drops = torch.tensor([[0.5, -1.0], [2.0, -2.0], [-0.1, -0.5], [1.0, -3.0], [-1.0, 0.0], [-2.0, 0.0]])
    picked = evidence.pick(drops, owner, item, 3)
    assert picked.shape == (3, 3, 2)
    assert picked[0, :, 0].tolist() == [1, 3, 0]  # by drop, those that raise the score
    assert picked[0, :, 1].tolist() == [2, -1, -1]  # none raises it: the strongest alone
    assert picked[1, :, 0].tolist() == [4, -1, -1] and (picked[2] == -1).all()  # user 2 has no history
    ids = evidence.as_ids(picked, np.array([0, 0, 1]), np.array([0, 1, 0]), pa.array([f"i{k}" for k in range(6)]))
    assert ids.to_pylist() == [["i1", "i3", "i0"], ["i2"], ["i4"]]
    assert evidence.leading(np.array([4, 7, 9]), 9).tolist() == [9, 4, 7]
    assert evidence.leading(np.array([4, -1, -1]), 1).tolist() == [1, 4, -1]


def test_drop_events_lowers_the_split_counts():
    batch = {"items": np.array([np.array([1, 2, 3, 4]), np.array([5, 6])], object),
             "n_train": np.array([2, 1]), "n_valid": np.array([1, 1]), "n_test": np.array([1, 0])}
    out = drop_events(batch, np.array([False, True, True, False, True, False]))
    assert [x.tolist() for x in out["items"]] == [[1, 4], [6]]
    assert out["n_train"].tolist() == [1, 0] and out["n_valid"].tolist() == [0, 1] and out["n_test"].tolist() == [1, 0]


def test_a_withheld_item_is_never_named_as_evidence():
    rows = pa.table({S.USER_ID: ["u", "u"], "rank": pa.array([1, 2], pa.int16()), S.ITEM_ID: ["a", "b"],
                     "score": pa.array([2.0, 1.0], pa.float32()), S.EVIDENCE: [["x", "secret"], ["secret"]]})
    kept, counted = withhold(rows, pa.array(["b", "secret"]), 2)
    assert kept.column(S.ITEM_ID).to_pylist() == ["a"] and counted == [1]
    assert kept.column(S.EVIDENCE).to_pylist() == [["x"]]
