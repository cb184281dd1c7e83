"""Fixtures: one local Ray for the session, tiny synthetic data, the shared datasets."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ray_jobs._common import LOCAL_RAY_ENV

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
    # Values no file would hold by chance: tests look for them where no credential may go.
    "AWS_ACCESS_KEY_ID": "AKIDINTERESTTESTKEY1",
    "AWS_SECRET_ACCESS_KEY": "interest-test-secret-0f3a9c",
    "AWS_DEFAULT_REGION": "us-east-1",
})
# Every Ray a test starts (in-process, `ray start`, a Cluster) is configured as a local
# `interest` job's Ray is (set before anything imports Ray Data, which reads it then).
for _key, _value in LOCAL_RAY_ENV.items():
    os.environ.setdefault(_key, _value)


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


@contextlib.contextmanager
def ray_head(cpus: int = 4):
    """A real Ray head, as `ray start --head` makes one on a cluster's head node: on free
    ports, in a temp dir of its own (so nothing else on this machine finds it by
    accident), with the Jobs API. Yields the Jobs API's address; stops every process it
    started."""
    ports = {flag: _free_port() for flag in ("port", "dashboard-port", "ray-client-server-port",
                                             "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                             "runtime-env-agent-port", "metrics-export-port")}
    venv_bin = str(Path(sys.executable).parent)
    # The jobs' `python` is this environment's, as on a node whose setup installed it.
    env = dict(os.environ, PATH=f"{venv_bin}:{os.environ['PATH']}", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory(prefix="rayhead-", dir="/tmp") as temp:
        env["RAY_TMPDIR"] = temp
        cmd = [f"{venv_bin}/ray", "start", "--head", "--block", f"--num-cpus={cpus}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats",
               *(f"--{flag}={port}" for flag, port in ports.items())]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        address = f"http://127.0.0.1:{ports['dashboard-port']}"
        try:
            from ray.job_submission import JobSubmissionClient

            deadline = time.time() + 90
            while True:
                try:
                    JobSubmissionClient(address).list_jobs()
                    break
                except Exception:  # not listening yet
                    if time.time() > deadline or proc.poll() is not None:
                        pytest.fail(f"the Ray head did not start ({' '.join(cmd)})")
                    time.sleep(1)
            yield address
        finally:
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(wait)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue


# A head that offers no CPU and two worker nodes, as processes of one machine
# (ray.cluster_utils.Cluster); prints the address, then holds the nodes until stdin closes.
_CLUSTER = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
for name in ("a", "b"):
    cluster.add_node(num_cpus=3, object_store_memory=300 * 2**20, resources={f"node_{name}": 1})
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.read()
cluster.shutdown()
"""


@contextlib.contextmanager
def three_nodes():
    """A Ray cluster of three nodes on this machine (:data:`_CLUSTER`): yields its
    address; shuts it down after."""
    with tempfile.TemporaryDirectory(prefix="raycl-", dir="/tmp") as temp:
        env = dict(os.environ, RAY_TMPDIR=temp, RAY_AUTH_MODE="disabled")  # its address file stays in temp
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen([sys.executable, "-c", _CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
        try:
            address = proc.stdout.readline().strip()
            if not address:
                pytest.fail("the three-node cluster did not start")
            yield address
        finally:
            proc.stdin.close()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def kill_node_running(marker: str, timeout: float = 120) -> int:
    """SIGKILL the raylet (the node) whose workers include a process whose command line
    holds ``marker``, and all its workers: a node vanishing. Returns the raylet's pid."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        for raylet in psutil.process_iter(["cmdline"]):
            cmd = " ".join(raylet.info["cmdline"] or [])
            if "/raylet" not in cmd.split(" ")[0] or "node_" not in cmd:
                continue
            try:
                children = raylet.children(recursive=True)
                if any(marker in " ".join(c.cmdline()) for c in children):
                    for proc in [raylet, *children]:
                        proc.kill()
                    return raylet.pid
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.1)
    pytest.fail(f"no worker node ran a process with {marker!r}")


class Outage:
    """A TCP proxy in front of a server (moto's S3) that a test can cut: while ``down``,
    every connection is accepted and closed at once (each one recorded, so a test sees
    the client's retries and their spacing) and open connections are dropped; back up,
    bytes flow again."""

    def __init__(self, port: int):
        self.upstream, self.down, self.refused = port, False, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self.down = True
        for conn in self.open:
            conn.close()

    def restore(self) -> None:
        self.down, self.refused = False, []

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            if self.down:
                self.refused.append(time.monotonic())
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for conn in (src, dst):
                conn.close()


@pytest.fixture
def s3_outage(s3_server, monkeypatch):
    """The driver's S3 traffic through an :class:`Outage` proxy to moto's server."""
    outage = Outage(S3_PORT)
    monkeypatch.setenv("AWS_ENDPOINT_URL", outage.url)
    yield outage
    outage.close()


def build_tiny_encoder(folder: Path, corpus: list[str], hidden: int = 32, bag_of_words: bool = False) -> Path:
    """A random 2-layer BERT over ``corpus``'s words (:func:`interest.text.encoder.random_bert`)."""
    from interest.text.encoder import random_bert

    return Path(random_bert(str(folder), corpus, hidden=hidden, bag_of_words=bag_of_words))


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


def assert_per_user_matches(results: dict, metric: str) -> None:
    """``evaluate(..., per_user=True)``'s table: one row per test user the model was
    measured on, whose mean is the reported figure."""
    table = results["per_user"]
    users, values = table.column(0).to_numpy(), table.column(metric).to_numpy()
    assert len(users) == results["model"]["users"] > 0 and len(set(users.tolist())) == len(users)
    assert abs(values.mean() - results["model"][metric]) < 1e-9


def set_dotted(cfg: dict, changes: dict) -> dict:
    """``cfg`` (a config as nested dicts) with each ``a.b.c: value`` of ``changes`` set."""
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg
