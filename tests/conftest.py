"""Fixtures: one local Ray for the session, tiny synthetic data, the shared datasets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# S3 tests talk to a real S3 API (moto's server) through s3fs. The variables are set
# before Ray starts, so its workers inherit them as they would on a configured cluster.
S3_PORT = _free_port()
os.environ.update({
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
})


@pytest.fixture(scope="session")
def ray_start_4_cpus():
    """A local Ray with 4 logical CPUs (2 cores here): Ray Data tasks beside Train workers."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip("../shared/data is absent (the real datasets are not part of the repository)")
    return SHARED


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory) -> Path:
    """300 users, 400 items, 6,000 events (seconds to generate); read-only for tests."""
    from interest.data.synthetic import SyntheticConfig, generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(SyntheticConfig(users=300, items=400, events=6000, seed=7), str(out))
    return out


@pytest.fixture(scope="session")
def prepared_small(synthetic_small, tmp_path_factory, ray_start_4_cpus) -> Path:
    """``synthetic_small`` prepared with leave-last-one-out."""
    from interest.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("prepared") / "ds"
    prepare(PrepareConfig(input=str(synthetic_small / "events"), items=str(synthetic_small / "items.parquet"),
                          out=str(out)))
    return out


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1; yields an s3fs filesystem with one bucket, ``test``."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(S3_PORT)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", S3_PORT), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto_server did not start")
    from interest.io import s3fs_filesystem

    fs = s3fs_filesystem()
    fs.mkdir("test")
    yield fs
    proc.terminate()
    proc.wait(10)


def build_tiny_encoder(folder: Path, corpus: list[str], hidden: int = 32, bag_of_words: bool = False) -> Path:
    """A random 2-layer BERT and a WordPiece tokenizer whose vocabulary is ``corpus``'s
    words and CJK characters, saved as a Hugging Face folder (nothing downloaded).

    ``bag_of_words``: the layers' attention and feed-forward outputs and the position
    embeddings are zeroed, so a mean-pooled vector is the mean of its tokens' random
    embeddings: texts that share words get similar vectors, as with a trained encoder,
    which tests of semantics (clusters, zero-shot transfer) need and random layers blur."""
    import re

    from transformers import BertConfig, BertModel, BertTokenizer

    words = set()
    for text in corpus:
        # What BERT's basic tokenizer makes of text: lower-cased words, punctuation, and
        # every CJK character on its own.
        words.update(re.findall(r"[\u4e00-\u9fff]|[^\W_\u4e00-\u9fff]+|[^\w\s]|_", text.lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    folder.mkdir(parents=True, exist_ok=True)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=256)
    import torch

    torch.manual_seed(0)
    model = BertModel(config)
    if bag_of_words:
        with torch.no_grad():
            model.embeddings.position_embeddings.weight.zero_()
            model.embeddings.token_type_embeddings.weight.zero_()
            for layer in model.encoder.layer:
                for dense in (layer.attention.output.dense, layer.output.dense):
                    dense.weight.zero_()
                    dense.bias.zero_()
    model.save_pretrained(folder)
    return folder


def prepare_planted(root: Path, items: dict[str, list], events: list[tuple], corpus: list[str]) -> dict:
    """Write a planted dataset (``items`` columns, ``events`` as (user, item, behaviour,
    time) rows), prepare it, and embed its items with a tiny encoder over ``corpus``;
    returns the folders (``prepared``, ``store``, ``encoder``, ``root``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from interest import schemas as S
    from interest.data.prepare import PrepareConfig, prepare
    from interest.text.embed import EmbedConfig, embed_items

    pq.write_table(pa.table(items), root / "items.parquet")
    users, item_ids, behaviors, ts = zip(*events)
    (root / "events").mkdir()
    pq.write_table(pa.table({S.USER_ID: users, S.ITEM_ID: item_ids, S.BEHAVIOR: behaviors, S.TS: list(ts)}),
                   root / "events" / "part-0.parquet")
    prepared = root / "prepared"
    prepare(PrepareConfig(input=str(root / "events"), items=str(root / "items.parquet"), out=str(prepared)))
    encoder = build_tiny_encoder(root / "encoder", corpus)
    embed_items(str(prepared), str(root / "store"), EmbedConfig(encoder=str(encoder)))
    return {"prepared": prepared, "store": root / "store", "encoder": encoder, "root": root}


@pytest.fixture(scope="session")
def tiny_encoder(synthetic_small, tmp_path_factory) -> Path:
    """A tiny random BERT folder covering the synthetic items' text (English and Chinese)."""
    import pyarrow.parquet as pq

    from interest.schemas import BEHAVIORS
    from interest.text.encoder import item_texts

    corpus = item_texts(pq.read_table(synthetic_small / "items.parquet")) + list(BEHAVIORS)
    return build_tiny_encoder(tmp_path_factory.mktemp("encoder") / "tiny-bert", corpus)


@pytest.fixture(scope="session")
def bow_store(prepared_small, synthetic_small, tmp_path_factory) -> tuple[Path, Path]:
    """(encoder, item vector store) of ``prepared_small``'s items under a bag-of-words tiny
    BERT (:func:`build_tiny_encoder`), whose vocabulary also covers the taxonomy's names."""
    import pyarrow.parquet as pq

    from interest.text.embed import EmbedConfig, embed_items
    from interest.text.encoder import item_texts

    root = tmp_path_factory.mktemp("bow")
    names = pq.read_table(synthetic_small / "taxonomy.parquet").to_pydict()
    corpus = item_texts(pq.read_table(synthetic_small / "items.parquet")) + names["name_en"] + names["name_zh"]
    encoder = build_tiny_encoder(root / "encoder", corpus, hidden=64, bag_of_words=True)
    embed_items(str(prepared_small), str(root / "store"), EmbedConfig(encoder=str(encoder)))
    return encoder, root / "store"
