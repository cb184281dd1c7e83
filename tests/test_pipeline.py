"""``interest pipeline``: the nightly job end to end on synthetic data, its warehouse
partitions queried with DuckDB, reruns, a scoring pass killed half-way, the gate,
``interest verify-output``, and the checks made before Ray starts."""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from interest import cli, io
from interest import schemas as S
from interest.pipeline import warehouse as W
from interest.pipeline.config import retrain_days
from interest.pipeline.run import check_gate, drift
from interest.score.summary import Summary, summarize
from interest.score.fallback import Fallback, complete
from conftest import kill_node_running, ray_head, set_dotted, three_nodes

DAY = "2026-11-30"
ROOT = Path(__file__).resolve().parents[1]
TABLES = ("user_next_actions", "user_tags", "user_recommendations", "user_zeroshot", "tag_audiences")


# --- pure functions ---------------------------------------------------------------------

def test_fallback_completes_users_the_model_left_out():
    rows = pa.table({S.USER_ID: ["a", "a"], "rank": [1, 2], S.ITEM_ID: ["i1", "i2"], "score": [0.9, 0.5],
                     S.EVIDENCE: [["h1"], ["h2", "h1"]]}, schema=S.RECOMMENDATIONS)
    done = complete(rows, ["a", "b", "c"], "user_recommendations", Fallback(["p1", "p2", "p3"], [0.5, 0.3, 0.2]))
    assert done.schema.equals(S.OUTPUTS["user_recommendations"])
    got = done.to_pylist()
    assert [(r[S.USER_ID], r["rank"], r[S.ITEM_ID], r[S.SOURCE]) for r in got] == [
        ("a", 1, "i1", "model"), ("a", 2, "i2", "model"),
        ("b", 1, "p1", "popular"), ("b", 2, "p2", "popular"), ("b", 3, "p3", "popular"),
        ("c", 1, "p1", "popular"), ("c", 2, "p2", "popular"), ("c", 3, "p3", "popular")]
    assert [r[S.EVIDENCE] for r in got] == [["h1"], ["h2", "h1"]] + [[]] * 6  # a fallback has no evidence
    tags = complete(S.TAG_SCORES.empty_table(), ["u"], "user_tags", Fallback(["food", "toys"], [0.6, 0.4]))
    assert tags.column(S.TAG).to_pylist() == ["food", "toys"] and tags.column("evidence").to_pylist() == [[], []]


def test_summaries_of_batches_add_up():
    vocab = pa.array([f"i{k}" for k in range(20)])
    fb = Fallback(["i0", "i1"], [0.5, 0.5])
    total = Summary()
    for users, items in ((["a"], ["i3", "i4"]), (["b", "c"], ["i4", "i9"])):
        rows = pa.table({S.USER_ID: [users[0]] * 2, "rank": [1, 2], S.ITEM_ID: items, "score": [1.0, 0.5],
                         S.EVIDENCE: [[], []]}, schema=S.RECOMMENDATIONS)
        total.add(json.loads(json.dumps(summarize(complete(rows, users, "user_recommendations", fb), vocab))))
    # a: i3 i4 (model); b: i4 i9 (model); c: i0 i1 (popular)
    assert total.as_dict() == {"sources": {"model": 4, "popular": 2}, "distinct_items": 5}


def test_gate_compares_the_model_with_each_baseline():
    results = {"task": "sequence", "model": {"ndcg@10": 0.30}, "popularity": {"ndcg@10": 0.10},
               "ease": {"ndcg@10": 0.31}}
    assert check_gate(results, "ndcg@10", ["popularity"], 0.0)["passed"]
    assert not check_gate(results, "ndcg@10", ["popularity"], 0.25)["passed"]
    failed = check_gate(results, "ndcg@10", ["popularity", "ease"], 0.0)
    assert not failed["passed"] and "ease 0.3100" in failed["why"]
    assert check_gate(results, "", ["popularity"], 0.0)["passed"]
    with pytest.raises(ValueError, match="not among"):
        check_gate(results, "hr@10", ["popularity"], 0.0)


def test_retrain_schedules_and_drift():
    assert retrain_days("every 7 days") == 7 and retrain_days("3d") == 3 and retrain_days("always") is None
    with pytest.raises(ValueError, match="retrain must be"):
        retrain_days("weekly")
    now = {"user_tags": {"top1_shares": {"a": 0.5, "b": 0.5}, "catalogue_coverage": 0.4}}
    before = {"user_tags": {"top1_shares": {"a": 1.0}, "catalogue_coverage": 0.5}}
    assert drift(now, before) == {"user_tags": {"catalogue_coverage_change": -0.1, "top1_total_variation": 0.5}}


def test_a_refit_on_every_event_is_a_config_of_its_own():
    from interest.tasks.base import TrainConfig

    assert TrainConfig(events="all").events == "all"
    with pytest.raises(ValueError, match="train.events must be split or all"):
        TrainConfig(events="test")
    with pytest.raises(ValueError, match="already training data"):
        TrainConfig(events="all", refit=1)


def test_publish_swaps_a_partition_whole(tmp_path):
    final = tmp_path / "t" / "dt=2026-01-01"
    for run, files in (("r1", ["part-1.parquet", "part-2.parquet"]), ("r2", ["part-9.parquet"])):
        staged = tmp_path / "_staging" / run / "t" / "dt=2026-01-01"
        staged.mkdir(parents=True)
        for f in files:
            pq.write_table(pa.table({"x": [1]}), staged / f)
        W.publish(str(staged), str(final), run)
        assert sorted(p.name for p in final.iterdir()) == sorted(files + ["_SUCCESS"])
        assert W.published_by(str(final)) == run and not staged.exists()
    assert not list((tmp_path / "_staging").rglob("*.parquet"))  # the replaced partition is gone


def test_an_unreachable_s3_during_publication_is_retried_then_named_and_no_partition_changes(s3_outage):
    out, day, tables = "s3://test/outage", "2026-12-01", ["user_tags", "user_recommendations"]

    def stage(attempt: str, rows: int) -> None:
        for table in tables:
            io.write_parquet(pa.table({"x": list(range(rows))}), W.staged(out, attempt, table, day) + "/part-0.parquet")

    stage(f"{day}-a.1", 3)
    W.publish_attempt(out, f"{day}-a.1", tables, day, "run-a")
    stage(f"{day}-b.1", 5)
    s3_outage.cut()
    start = time.monotonic()
    with pytest.raises(io.StorageError, match=r"publishing 2026-12-01: S3 bucket 'test' \(http://127.0.0.1:\d+\)"):
        W.publish_attempt(out, f"{day}-b.1", tables, day, "run-b")
    waited = time.monotonic() - start
    tries = s3_outage.refused
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    print(f"S3 cut: {len(tries)} connections refused over {waited:.1f} s, gaps {[round(g, 2) for g in gaps]}")
    # The client retried, waiting between tries (it may open two connections per try).
    waits = [g for g in gaps if g > 0.1]
    assert len(tries) >= 3 and len(waits) >= 2 and sum(waits) >= 2 and waited < 120
    s3_outage.restore()
    for table in tables:  # every partition as run a published it, whole
        current = W.current(out, table, day)
        assert current["run_id"] == "run-a"
        assert pq.read_table(current["files"][0], filesystem=io.s3fs_filesystem()).num_rows == 3
    # Once S3 answers again, the rerun's publication goes through.
    W.publish_attempt(out, f"{day}-b.1", tables, day, "run-b")
    assert {W.current(out, t, day)["run_id"] for t in tables} == {"run-b"}


# --- checks before Ray ------------------------------------------------------------------

def _config(root: Path, synthetic: Path, encoder: Path, **changes) -> Path:
    """A pipeline config of every task on ``synthetic`` (tiny models, 1 epoch)."""
    new_tags = root / "new_tags.csv"
    new_tags.write_text('tag,description\ncamping,"tents and outdoor gear"\ncoffee break,"coffee and tea"\n')
    cfg = {
        "out": str(root / "warehouse"), "work": str(root / "work"), "dt": DAY,
        "input": {"input": str(synthetic / "events"), "items": str(synthetic / "items.parquet")},
        "embed": {"encoder": str(encoder)},
        "train": {"num_workers": 1},
        "score": {"batch_size": 128},
        "tasks": {
            "sequence": {"config": {"preset": "small", "train": {"epochs": 1}}, "gate": {"metric": ""}},
            "tags": {"top_k": 3, "config": {"mode": "cached", "train": {"epochs": 1}}, "gate": {"metric": ""}},
            "recommend": {"config": {"train": {"epochs": 1}}, "gate": {"metric": ""}},
            "zeroshot": {"new_tags": str(new_tags), "audience": 20, "config": {"train": {"epochs": 1}}},
        },
    }
    set_dotted(cfg, changes)
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("change, message", [
    ({"tasks.sequence.retrian": "always"}, "unknown config key 'tasks.sequence.retrian'"),
    ({"tasks.sequence.config.train.epoch": 2}, "unknown config key 'tasks.sequence.config.train.epoch'"),
    ({"tasks.sequence.retrain": "never"}, "retrain is never, and no finished run of sequence"),
    ({"tasks.sequence.retrain": "weekly"}, "retrain must be always, if_missing, never"),
    ({"tasks.zeroshot.new_tags": None}, "task zeroshot scores new tags"),
    ({"out": "FILE/warehouse"}, "out: cannot write to"),
    ({"tasks.sequence.run": "NOWHERE"}, "no checkpoint in"),
])
def test_a_bad_config_fails_before_ray_starts(tmp_path, synthetic_small, tiny_encoder, monkeypatch, capsys,
                                               change, message):
    import ray_jobs.pipeline

    monkeypatch.setattr(ray_jobs.pipeline, "init_ray", lambda *a, **k: pytest.fail("Ray started"))
    (tmp_path / "FILE").write_text("a file, not a folder")
    change = {k: (str(tmp_path / v) if isinstance(v, str) and v.split("/")[0] in ("FILE", "NOWHERE") else v)
              for k, v in change.items()}
    path = _config(tmp_path, synthetic_small, tiny_encoder, **change)
    assert cli.main(["pipeline", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


# --- the job on Ray ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def nightly(tmp_path_factory, synthetic_small, tiny_encoder):
    """One night of the pipeline on ``synthetic_small``, submitted through the Jobs API (what
    `ray job submit --working-dir .` does) to a Ray head started for it: (config,
    warehouse, the job's console output)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    root = tmp_path_factory.mktemp("nightly")
    path = _config(root, synthetic_small, tiny_encoder)
    with ray_head() as address:
        client = JobSubmissionClient(address)
        job = client.submit_job(entrypoint=f"python -m ray_jobs.pipeline --config {path}",
                                runtime_env={"working_dir": str(ROOT), "excludes": [".git"]})
        deadline = time.time() + 900
        while not (status := client.get_job_status(job)).is_terminal() and time.time() < deadline:
            time.sleep(2)
        logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-5000:]
    return {"config": path, "out": root / "warehouse", "work": root / "work", "stdout": logs,
            "items": synthetic_small / "items.parquet"}


def _env() -> dict:
    """The test's environment for a pipeline in a subprocess (its own local Ray)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent), RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    return env


def _users(work: Path) -> set:
    return set(pq.read_table(work / "prepared" / "vocab" / "users").column(S.USER_ID).to_pylist())


@pytest.mark.ray
def test_the_pipeline_publishes_every_table_for_every_user(nightly, capsys):
    stdout, out = nightly["stdout"], nightly["out"]
    # The console tells the story: a line per step, the summary; Ray's logs are in the file.
    for n, step in enumerate(("prepare", "embed", "train", "evaluate", "refit", "score", "publish"), start=1):
        assert f"[{n}/7] {step}" in stdout
    assert "published in" in stdout and "(RayTrainWorker" not in stdout and len(stdout.splitlines()) < 60
    assert cli.main(["verify-output", str(out), "--dt", DAY]) == 0
    assert "complete" in capsys.readouterr().out
    manifest = W.latest_published(str(out), DAY)
    users = _users(nightly["work"])
    for table in TABLES:
        folder = out / table / f"dt={DAY}"
        files = sorted(p.name for p in folder.iterdir())
        assert files == sorted(manifest["tables"][table]["files"] + ["_SUCCESS"])
        data = pq.read_table(folder)
        assert data.schema.equals(S.OUTPUTS[table]) and "dt" not in data.column_names
        assert data.num_rows == manifest["tables"][table]["rows"] > 0
        if table != "tag_audiences":
            assert set(data.column(S.USER_ID).to_pylist()) == users
    assert manifest["tables"]["user_zeroshot"]["rows"] == 2 * len(users)
    assert manifest["tables"]["tag_audiences"]["rows"] == 2 * 20
    # Scored with the refit, which trained on every event, the test period included.
    newest = manifest["input"]["newest"]
    for name, model in manifest["models"].items():
        assert model["refit"] and model["scored_with"].endswith(f"+refit-{DAY}")
        assert model["newest_training_event"] == max(newest.values())
    assert set(manifest["evaluation"]) == {"sequence", "tags", "recommend", "zeroshot"}
    assert manifest["summary"]["user_recommendations"]["catalogue_coverage"] > 0
    assert [s["step"] for s in manifest["steps"]][:2] == ["prepare", "embed"]
    # Every row a model wrote for a user with a history says why, with the user's own items.
    for table in ("user_recommendations", "user_next_actions", "user_tags", "user_zeroshot"):
        rows = pq.read_table(out / table / f"dt={DAY}", columns=[S.SOURCE, S.EVIDENCE]).to_pylist()
        assert all(r[S.EVIDENCE] for r in rows if r[S.SOURCE] == "model"), table


@pytest.mark.ray
def test_explain_prints_a_users_rows_with_the_events_behind_them(nightly, capsys):
    manifest = W.latest_published(str(nightly["out"]), DAY)
    prepared = nightly["work"] / "prepared"
    published = pq.read_table(nightly["out"] / "user_next_actions" / f"dt={DAY}").to_pylist()
    user = next(r[S.USER_ID] for r in published if r[S.SOURCE] == "model")
    mine = sorted((r for r in published if r[S.USER_ID] == user), key=lambda r: r["rank"])
    titles = dict(zip(*pq.read_table(nightly["items"], columns=[S.ITEM_ID, S.TITLE]).to_pydict().values()))
    run = manifest["models"]["sequence"]["scored_with"]
    assert cli.main(["explain", "--run", run, "--data", str(prepared), "--user", user, "--events", "5"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"user {user}: ") and "user_next_actions (sequence):" in text
    # The rows the night published, in their order, each followed by its evidence as events.
    listed = re.findall(r"^\s+(\d+)\. (\S+) ", text, re.M)
    assert listed == [(str(r["rank"]), r[S.ITEM_ID]) for r in mine]
    reasons = re.findall(r"because of (\w+) (\S+) \"([^\"]*)\".* on (\d{4}-\d\d-\d\d)", text)
    assert [i for _, i, _, _ in reasons] == [i for r in mine for i in r[S.EVIDENCE]]
    assert all(title == titles[i] and behavior in S.BEHAVIORS for behavior, i, title, _ in reasons)
    assert cli.main(["explain", "--run", run, "--data", str(prepared), "--user", "nobody"]) == 2
    assert "'nobody' is not in" in capsys.readouterr().err


@pytest.mark.ray
def test_duckdb_reads_the_partitions(nightly):
    out = nightly["out"]
    con = duckdb.connect()
    counts = dict(con.execute(
        "SELECT 'user_recommendations', count(*) FROM read_parquet(?, hive_partitioning = true) WHERE dt = ? "
        "UNION ALL SELECT 'user_tags', count(*) FROM read_parquet(?, hive_partitioning = true) WHERE dt = ?",
        [str(out / "user_recommendations" / "*" / "*.parquet"), DAY, str(out / "user_tags" / "*" / "*.parquet"),
         DAY]).fetchall())
    manifest = W.latest_published(str(out), DAY)
    assert counts == {t: manifest["tables"][t]["rows"] for t in ("user_recommendations", "user_tags")}
    user = con.execute(f"SELECT min(user_id) FROM read_parquet('{out}/user_recommendations/*/*.parquet')").fetchone()[0]
    top = con.execute(
        f"SELECT rank, r.item_id, i.title FROM read_parquet('{out}/user_recommendations/*/*.parquet', "
        f"hive_partitioning = true) r JOIN read_parquet('{nightly['items']}') i USING (item_id) "
        "WHERE r.user_id = ? AND r.dt = ? ORDER BY rank LIMIT 10", [user, DAY]).fetchall()
    assert [r[0] for r in top] == list(range(1, 11)) and all(r[2] for r in top)
    # The reader's recipe for S3 (README): the files the pointer lists, the same rows.
    con.execute("SET VARIABLE files = (SELECT flatten(list(files)) FROM read_json(?))",
                [str(out / W.PUBLISHED / "user_recommendations.json")])
    assert con.execute("SELECT count(*) FROM read_parquet(getvariable('files'), hive_partitioning = true) "
                       "WHERE dt = ?", [DAY]).fetchone()[0] == counts["user_recommendations"]


@pytest.mark.ray
def test_the_pipeline_draws_its_report_and_the_next_day_flags_what_moved(nightly, tmp_path, capsys):
    from interest.report.build import build

    out = nightly["out"]
    report = out / "_reports" / f"dt={DAY}" / "report.html"
    assert f"report: {report}" in nightly["stdout"]
    html = report.read_text()
    for section in ("data", "quality", "calibration", "outputs", "drift"):
        assert f'<section id="{section}">' in html
    embedded = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    pngs = sorted(p.name for p in report.parent.glob("*.png"))
    assert len(embedded) == len(pngs) and all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in embedded)
    assert {"data_events_per_day.png", "outputs_coverage.png", "outputs_popularity_bias.png",
            "outputs_user_tags_shares.png", "outputs_user_next_actions_shares.png", "calibration_tags.png",
            "calibration_next_behavior.png"} <= set(pngs)
    for task in ("sequence", "tags", "recommend", "zeroshot"):  # every task's training curves
        assert f"quality_{task}_loss.png" in pngs, pngs
    assert "No earlier published day to compare with" in html
    # The next day: the same outputs, but sequence's test NDCG halved. It heads the page.
    manifest = W.latest_published(str(out), DAY)
    later = tmp_path / "warehouse"
    (later / W.RUNS).mkdir(parents=True)
    shutil.copy(W.manifest_path(str(out), manifest["run_id"]), later / W.RUNS)
    nxt = json.loads(json.dumps(manifest))
    nxt.update(dt="2026-12-01", run_id="2026-12-01-next", finished="9999-12-31T00:00:00+00:00")
    nxt["evaluation"]["sequence"]["metrics"]["model"]["ndcg@10"] /= 2
    (later / W.RUNS / "2026-12-01-next.json").write_text(json.dumps(nxt))
    assert cli.main(["report", str(later), "--dt", "2026-12-01"]) == 0
    html = Path(capsys.readouterr().out.strip()).read_text()
    flags = html[html.index('<div class="flags"'):html.index("</div>")]
    assert "sequence: test ndcg@10 (model)" in flags and "-50.0%" in flags
    assert flags.count("<li>") == 1  # nothing else moved
    assert f"previous: dt={DAY}" in html


def _chromium() -> str:
    """Debian's Chromium, which `make` installs; a skip only where nothing could install it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail("Chromium is missing, though apt-get could install it: run `make chromium`")
    pytest.skip("no Chromium, and no package manager to install it as root (`make chromium` says the same)")


@pytest.mark.ray
def test_the_report_opens_in_a_real_browser_with_every_section_and_image(nightly):
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    report = nightly["out"] / "_reports" / f"dt={DAY}" / "report.html"
    shot = ROOT / "test-artifacts" / "report.png"
    shot.parent.mkdir(exist_ok=True)
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.goto(report.as_uri(), wait_until="load")
        sections = page.eval_on_selector_all("section h2", "els => els.map(e => e.textContent)")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.alt])")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    print(f"screenshot: {shot}")
    assert sections == ["Data", "Quality", "Calibration", "Outputs", "Drift"]
    assert len(images) == len(list(report.parent.glob("*.png"))) >= 10
    assert all(done and width > 0 for done, width, _ in images), [alt for d, w, alt in images if not (d and w)]
    assert not errors, errors
    assert shot.stat().st_size > 10_000


@pytest.mark.ray
def test_a_rerun_skips_what_finished_and_replaces_the_partition_whole(nightly, capsys):
    out, config = nightly["out"], str(nightly["config"])
    assert cli.main(["pipeline", "--config", config]) == 0
    said = capsys.readouterr().out
    assert "unchanged input: kept" in said and "already published; nothing to do" in said
    assert "was already published" in said
    assert "trained" not in said  # every run reused
    before = W.latest_published(str(out), DAY)
    assert cli.main(["pipeline", "--config", config, "--set", "tasks.recommend.top_k=4"]) == 0
    capsys.readouterr()
    after = W.latest_published(str(out), DAY)
    assert after["run_id"] != before["run_id"]
    assert cli.main(["verify-output", str(out), "--dt", DAY]) == 0
    recs = pq.read_table(out / "user_recommendations" / f"dt={DAY}")
    assert recs.num_rows == 4 * len(_users(nightly["work"]))  # the old top 10 is gone, nothing twice
    assert not (out / W.STAGING).exists()


@pytest.mark.ray
def test_a_scoring_pass_killed_midway_leaves_the_partition_and_a_rerun_completes_it(nightly, capsys):
    out, config = nightly["out"], str(nightly["config"])
    folder = out / "user_recommendations" / f"dt={DAY}"
    published = W.published_by(str(folder))
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    args = ["pipeline", "--config", config, "--set", "tasks.recommend.top_k=6", "--set", "score.batch_size=8"]
    proc = subprocess.Popen([sys.executable, "-m", "interest.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env(), start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list((out / W.STAGING).rglob("part-*.parquet")) and time.time() < deadline:
            assert proc.poll() is None, "the pipeline ended before it wrote anything"
            time.sleep(0.05)
        assert list((out / W.STAGING).rglob("part-*.parquet")), "scoring never started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert W.published_by(str(folder)) == published
    assert {p.name: p.stat().st_size for p in folder.iterdir()} == files
    assert cli.main(["verify-output", str(out), "--dt", DAY]) == 0
    capsys.readouterr()
    assert cli.main(args) == 0
    assert cli.main(["verify-output", str(out), "--dt", DAY]) == 0
    assert pq.read_table(folder).num_rows == 6 * len(_users(nightly["work"]))


@pytest.mark.ray
def test_a_worker_node_lost_while_scoring_loses_and_repeats_no_user(nightly):
    """Issue 24: a three-node cluster; the node running a scoring actor vanishes (its
    raylet and workers SIGKILLed) in the middle of the scoring pass. The job still
    completes, and verify-output finds every user exactly once in every table. The
    models are the nightly run's; a new day's partition is scored."""
    day, out = "2026-12-03", str(nightly["out"])
    with three_nodes() as address:
        proc = subprocess.Popen([sys.executable, "-m", "ray_jobs.pipeline", "--config", str(nightly["config"]),
                                 "--address", address, "--set", f"dt={day}", "--set", "score.concurrency=2",
                                 "--set", "score.batch_size=4"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
        said = []
        for line in proc.stdout:  # until the pass has scored its first users
            said.append(line)
            if "users," in line and "rows" in line:
                break
        killed = kill_node_running("Scorer")
        said += proc.stdout.readlines()
        proc.wait(600)
    said = "".join(said)
    assert proc.returncode == 0, said[-4000:]
    assert killed and "[7/7] publish" in said
    assert cli.main(["verify-output", out, "--dt", day]) == 0  # every user once in every table
    manifest = W.latest_published(out, day)
    assert manifest["users"] == len(_users(nightly["work"]))


@pytest.mark.ray
def test_verify_output_finds_a_missing_user_and_a_repeated_rank(nightly, tmp_path, capsys):
    bad = tmp_path / "warehouse"
    shutil.copytree(nightly["out"], bad)
    tags = bad / "user_tags" / f"dt={DAY}"
    table = pq.read_table(tags)
    gone = table.column(S.USER_ID)[0].as_py()
    for f in tags.glob("*.parquet"):
        f.unlink()
    pq.write_table(table.filter(pa.compute.not_equal(table[S.USER_ID], gone)), tags / "part-0.parquet")
    recs = bad / "user_recommendations" / f"dt={DAY}"
    first = sorted(recs.glob("*.parquet"))[0]
    shutil.copy(first, recs / "part-copy.parquet")
    assert cli.main(["verify-output", str(bad), "--dt", DAY]) == 1
    err = capsys.readouterr().err
    assert "user_tags: 1 of" in err and repr(gone) in err
    assert "user_recommendations: " in err and "duplicated (user_id, rank)" in err
    assert "the manifest says" in err  # the row counts no longer match
    assert cli.main(["verify-output", str(bad), "--dt", "2020-01-01"]) == 1
    assert "no published run for dt=2020-01-01" in capsys.readouterr().err


@pytest.mark.ray
def test_the_gate_stops_the_publish(nightly, capsys):
    out, config = nightly["out"], str(nightly["config"])
    before = W.latest_published(str(out), DAY)
    rc = cli.main(["pipeline", "--config", config, "--set", "tasks.recommend.gate.metric=ndcg@10",
                   "--set", "tasks.recommend.gate.margin=1.0", "--set", "tasks.recommend.top_k=2"])
    assert rc == 3
    said = capsys.readouterr().out
    assert "stopped: nothing published; recommend: model ndcg@10" in said and "does not beat popularity" in said
    assert W.latest_published(str(out), DAY)["run_id"] == before["run_id"]
    stopped = [m for m in W.manifests(str(out)) if m["status"].startswith("stopped by the gate")]
    assert stopped and not stopped[-1]["evaluation"]["recommend"]["gate"]["passed"]
    assert json.loads(json.dumps(stopped[-1]))["dt"] == DAY


# --- on S3 ------------------------------------------------------------------------------

@pytest.mark.ray
@pytest.mark.nightly  # long: `make test-nightly` (README, Development)
def test_the_pipeline_reads_and_writes_s3_and_readers_follow_the_pointer(s3_server, synthetic_small, tiny_encoder,
                                                                          tmp_path, ray_start_4_cpus, capsys):
    """Input, work and warehouse on S3 (moto's server): every table for every user, each
    partition published by one PUT of its pointer, the replaced run's files kept for
    queries already running and the one before deleted."""
    fs = s3_server
    fs.put(str(synthetic_small / "events"), "test/nightly/input/events", recursive=True)
    fs.put(str(synthetic_small / "items.parquet"), "test/nightly/input/items.parquet")
    path = _config(tmp_path, synthetic_small, tiny_encoder, **{
        "out": "s3://test/nightly/warehouse", "work": "s3://test/nightly/work",
        "input": {"input": "s3://test/nightly/input/events", "items": "s3://test/nightly/input/items.parquet"}})
    cfg = yaml.safe_load(path.read_text())
    cfg["tasks"] = {k: v for k, v in cfg["tasks"].items() if k in ("sequence", "recommend")}
    path.write_text(yaml.safe_dump(cfg))
    out = cfg["out"]
    runs = []
    said = ""
    for top_k in (10, 4, 3):
        assert cli.main(["pipeline", "--config", str(path), "--set", f"tasks.recommend.top_k={top_k}"]) == 0
        said += "".join(capsys.readouterr())
        runs.append(W.latest_published(out, DAY))
        assert cli.main(["verify-output", out, "--dt", DAY]) == 0
        assert "complete" in capsys.readouterr().out
    users = set(io.read_parquet("s3://test/nightly/work/prepared/vocab/users").column(S.USER_ID).to_pylist())
    for table in ("user_next_actions", "user_recommendations"):
        (entry,) = W.pointer(out, table)
        assert entry["run_id"] == runs[-1]["run_id"] and entry["location"] == runs[-1]["tables"][table]["path"]
        assert entry["files"] and all(f.startswith(entry["location"] + "/part-") for f in entry["files"])
        data = pa.concat_tables(io.read_parquet(f) for f in entry["files"])
        assert data.schema.equals(S.OUTPUTS[table]) and set(data.column(S.USER_ID).to_pylist()) == users
    recs = pa.concat_tables(io.read_parquet(f) for f in W.current(out, "user_recommendations", DAY)["files"])
    assert recs.num_rows == 3 * len(users)  # the last run's top 3 only
    # Nothing under the tables' own folders (a glob there has no atomic view on S3); the
    # files of the run replaced last stay for queries already running, the first run's are gone.
    assert not fs.exists("test/nightly/warehouse/user_recommendations")
    kept = {W.attempt_of(out, r["tables"]["user_recommendations"]["path"]) for r in runs}
    assert set(io.children(W.attempts_root(out))) == kept - {W.attempt_of(out, runs[0]["tables"]["user_recommendations"]["path"])}
    assert any(n.startswith("pipeline-") for n in io.children("s3://test/nightly/work/logs"))
    # A run reused from S3 by the next night: its checkpoints load from there.
    assert W.latest_published(out, DAY)["models"]["recommend"]["run"].startswith("s3://test/nightly/work/runs/")
    # DuckDB reads the published partition through s3fs, by the pointer (README's recipe).
    con = duckdb.connect()
    con.register_filesystem(fs)
    con.execute("SET VARIABLE files = (SELECT flatten(list(files)) FROM read_json(?))",
                [f"{out}/{W.PUBLISHED}/user_recommendations.json"])
    assert con.execute("SELECT count(*), count(DISTINCT user_id) FROM read_parquet(getvariable('files'), "
                       "hive_partitioning = true)").fetchone() == (3 * len(users), len(users))
    # No credential in what the jobs said, wrote or logged: every object of the bucket.
    secrets = [os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]]
    assert not any(secret in said for secret in secrets)
    written = [f for f in fs.find("test/nightly") if not f.startswith("test/nightly/input/")]
    assert len(written) > 50 and not [f for f in written if any(x.encode() in fs.cat_file(f) for x in secrets)]


@pytest.mark.ray
@pytest.mark.nightly  # long: `make test-nightly` (README, Development)
def test_the_pipeline_tunes_a_task_then_trains_its_best_config(synthetic_small, tiny_encoder, tmp_path,
                                                                ray_start_4_cpus, capsys):
    path = _config(tmp_path, synthetic_small, tiny_encoder)
    cfg = yaml.safe_load(path.read_text())
    cfg["tasks"] = {"sequence": {**cfg["tasks"]["sequence"],
                                 "tune": {"num_samples": 2, "max_concurrent_trials": 1, "space": str(tmp_path / "s.yaml")}}}
    cfg["tasks"]["sequence"]["config"]["train"]["epochs"] = 2
    (tmp_path / "s.yaml").write_text("replace: true\ntrain.lr: {low: 0.0001, high: 0.01, log: true}\n")
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["pipeline", "--config", str(path)]) == 0
    said = capsys.readouterr().out
    assert "[3/7] tune     sequence" in said and "2 trials" in said
    manifest = W.latest_published(str(tmp_path / "warehouse"), DAY)
    search = manifest["models"]["sequence"]["tuned"]["search"]
    best = yaml.safe_load(Path(search, "best.yaml").read_text())
    trained = json.loads(next(Path(manifest["models"]["sequence"]["run"]).glob("checkpoint_*/state.json")).read_text())
    assert trained["config"]["train"]["lr"] == best["train"]["lr"] == manifest["models"]["sequence"]["tuned"][
        "best"]["params"]["train.lr"]
    # The next night keeps the search (if_missing) and the run trained with its config.
    assert cli.main(["pipeline", "--config", str(path), "--set", "dt=2026-12-01"]) == 0
    said = capsys.readouterr().out
    assert f"kept the search in {search}" in said and "trials" not in said and "reused" in said
