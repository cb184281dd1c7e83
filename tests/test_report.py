"""The report's parts that need no pipeline run: quarantine examples, metric groups,
drift flags. The whole report, drawn by the pipeline and opened in a browser, is tested
in test_pipeline.py on the nightly run."""

import pyarrow as pa
import pyarrow.parquet as pq

from interest import schemas as S
from interest.evaluate import published
from interest.report.build import drift_rows, metric_groups, published_beside, quarantine_examples


def test_quarantine_examples_are_a_few_per_reason(tmp_path):
    folder = tmp_path / "quarantine" / "events"
    folder.mkdir(parents=True)
    rows = [("a.csv", "bad_ts", f"row {i}") for i in range(9)] + [("b.csv", "no_user", "x" * 500)]
    for part in range(2):
        pq.write_table(pa.table({S.SOURCE_FILE: [r[0] for r in rows[part::2]], S.REASON: [r[1] for r in rows[part::2]],
                                 S.RECORD: [r[2] for r in rows[part::2]]}, schema=S.QUARANTINE),
                       folder / f"part-{part}.parquet")
    got = quarantine_examples(str(tmp_path), ["bad_ts", "no_user"])
    assert [r[0] for r in got].count("bad_ts") == 5 and [r[0] for r in got].count("no_user") == 1
    assert got[-1] == ["no_user", "b.csv", "x" * 200]  # long records cut
    assert quarantine_examples(str(tmp_path / "none"), ["bad_ts"]) == []


def test_metric_groups_keep_what_every_method_reports():
    metrics = {"model": {"ndcg@10": 0.3, "hr@10": 0.5, "users": 90, "users_per_s": 1e4, "ndcg@10_se": 0.01},
               "popularity": {"ndcg@10": 0.1, "hr@10": 0.2, "users": 90}, "ease": {"ndcg@10": 0.2}}
    assert metric_groups(metrics) == {"ndcg@10": {"model": 0.3, "popularity": 0.1, "ease": 0.2}}


def test_drift_flags_what_moved_past_the_threshold_first():
    before = {"evaluation": {"tags": {"metrics": {"model": {"map": 0.8}, "popularity": {"map": 0.2}},
                                      "ece": {"tags": 0.05}}},
              "summary": {"user_recommendations": {"catalogue_coverage": 0.30}},
              "input": {"events": 1000, "users": 100, "items": 50, "quarantined": 0}}
    now = {"evaluation": {"tags": {"metrics": {"model": {"map": 0.6}, "popularity": {"map": 0.2}},
                                   "ece": {"tags": 0.07}}},
           "summary": {"user_recommendations": {"catalogue_coverage": 0.31}},
           "drift": {"user_tags": {"top1_total_variation": 0.25}},
           "input": {"events": 1040, "users": 100, "items": 50, "quarantined": 3}}
    rows = {r["what"]: r for r in drift_rows(now, before, 0.1)}
    assert rows["tags: test map (model)"]["flagged"] and round(rows["tags: test map (model)"]["change"], 3) == -0.25
    assert rows["user_tags: rank-1 mix, total variation"]["flagged"]
    assert rows["input: quarantined"]["flagged"]  # from none to some
    assert not rows["input: events"]["flagged"] and not rows["tags: calibration error of tags"]["flagged"]
    assert not rows["user_recommendations: catalogue coverage"]["flagged"]
    order = [r["flagged"] for r in drift_rows(now, before, 0.1)]
    assert order == sorted(order, reverse=True)  # flagged first
    assert drift_rows(now, None, 0.1) == []


def test_published_results_are_drawn_only_on_their_file_and_protocol():
    report = {"config": {"format": "s3rec", "split": {"method": "leave_last", "k": 1}},
              "files": {"/data/amazon_beauty_s3rec/Beauty.txt": {"input": 198_502}}}
    assert published.source_of(report).dataset == "amazon_beauty_s3rec"
    edited = {**report, "files": {"/data/Beauty.txt": {"input": 198_400}}}  # a filtered copy
    other_split = {**report, "config": {"format": "s3rec", "split": {"method": "time", "k": 1}}}
    assert published.source_of(edited) is None and published.source_of(other_split) is None

    protocol = {"ranking": "full", "split": "test", "target": "first", "mask_seen": True}
    groups = {"hr@10": {"model": 0.07, "popularity": 0.01}, "ndcg@10": {"model": 0.04, "popularity": 0.006}}
    drawn = published_beside(groups, protocol, "amazon_beauty_s3rec")
    assert "ICLRec" in [r.model for r in drawn]
    assert groups["ndcg@10"]["ICLRec (published)"] == 0.0403 and groups["hr@10"]["SASRec (published)"] == 0.0605
    assert "hr@20" not in groups  # only beside the metrics the run measured
    for sampled in ({**protocol, "ranking": "sampled-100"}, {**protocol, "mask_seen": False}):
        untouched = {"hr@10": {"model": 0.5}}
        assert published_beside(untouched, sampled, "amazon_beauty_s3rec") == ()
        assert untouched == {"hr@10": {"model": 0.5}}
    assert published_beside({"hr@10": {"model": 0.5}}, protocol, None) == ()


def test_the_quality_section_reads_the_protocol_from_the_manifest(tmp_path):
    from interest.report.build import quality_section

    protocol = {"ranking": "full", "split": "test", "target": "first", "mask_seen": True}
    manifest = {"input": {"public_dataset": "amazon_beauty_s3rec"}, "models": {},
                "evaluation": {"sequence": {"metrics": {"model": {"hr@10": 0.07, "ndcg@10": 0.04},
                                                        "popularity": {"hr@10": 0.01, "ndcg@10": 0.006}},
                                            "protocol": protocol, "gate": {"passed": True, "why": "gate off"}}}}
    section = quality_section(manifest, str(tmp_path))
    assert [t["caption"] for t in section.tables] == ["sequence: published results on this file"]
    assert "ICLRec" in [r[0] for r in section.tables[0]["rows"]] and "hatched" in section.figures[0].caption
    manifest["input"]["public_dataset"] = None  # any other data: no published rows
    assert quality_section(manifest, str(tmp_path)).tables == []
