"""``interest report``: one self-contained HTML page per published warehouse day.

The page is for the people who decide whether tonight's scores ship. It reads what the
nightly job already wrote (the run manifest, the prepared data's report, each model's
checkpoint history, the published partitions) and draws it with
:mod:`interest.report.plots`:

- **Data**: events per day by behaviour type, users and items, quarantined rows by reason
  with a few examples, duplicates removed; beside the previous run's figures (all from
  the run manifests' ``input``, which ``prepare``'s report fills).
- **Quality**: each task's test metrics beside its baselines, and its training curves
  (loss and validation metric per epoch, the best epoch marked).
- **Calibration**: reliability diagrams, with expected calibration error, of the tags'
  probabilities and of the next behaviour's, from the evaluation's held-out labels.
- **Outputs**: catalogue coverage, the popularity-bias curve, the tags' and next
  behaviours' shares, the zero-shot few-shot curve where evaluated.
- **Drift**: every metric and output statistic against the previous published day,
  those past the threshold listed at the top of the page.

Images are embedded (base64), so the file opens anywhere without a network; the PNGs are
written beside it too. The page comes from one Jinja2 template,
``interest/report/templates/report.html``.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads

from interest import io
from interest import schemas as S
from interest.evaluate import published
from interest.pipeline import warehouse as W
from interest.report import plots
from interest.train import checkpoint as ckpt

REPORTS = "_reports"
TEMPLATES = Path(__file__).parent / "templates"
NOT_METRICS = ("users", "users_per_s", "tags")  # counts beside the metrics in an evaluation's dicts
EXAMPLES = 5  # quarantined rows shown per reason
POPULARITY_BINS = 10


@dataclass
class Figure:
    name: str  # the PNG's file name
    caption: str
    path: str = ""  # where it was drawn (a local temporary folder)

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(Path(self.path).read_bytes()).decode()


@dataclass
class Section:
    key: str  # the HTML anchor
    title: str
    figures: list[Figure] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)  # {"caption", "header", "rows"}
    notes: list[str] = field(default_factory=list)


def report_folder(out: str, day: str) -> str:
    return io.join(out, REPORTS, f"dt={day}")


def previous_manifest(published: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The newest of the ``published`` runs of an earlier day: what this day is compared with."""
    earlier = [m for m in published if m["dt"] < manifest["dt"]]
    return max(earlier, key=lambda m: (m["dt"], m.get("finished") or ""), default=None)


def build(out: str, day: str, *, threshold: float = 0.1) -> str:
    """Write the report of ``day``'s published run under ``OUT/_reports/dt=DAY/``; returns
    the HTML file's path. ``threshold``: a relative change past which a drift is flagged."""
    published = [m for m in W.manifests(out) if m.get("status") == "published"]  # one read of the manifests
    of_day = [m for m in published if m["dt"] == day]
    if not of_day:
        raise io.InputError(f"no published run for dt={day} in {io.join(out, W.RUNS)}: nothing to report on")
    manifest = of_day[-1]  # the newest, as W.latest_published picks it
    before = previous_manifest(published, manifest)
    folder = report_folder(out, day)
    with tempfile.TemporaryDirectory() as scratch:
        sections = [data_section(manifest, before, scratch), quality_section(manifest, scratch),
                    calibration_section(manifest, scratch), outputs_section(out, manifest, scratch)]
        changes = drift_rows(manifest, before, threshold)
        sections.append(drift_section(changes, before, threshold))
        html = render(manifest, before, sections, [c for c in changes if c["flagged"]], threshold)
        if io.exists(folder):  # a redrawn report keeps no figure of the last drawing
            io.remove(folder)
        for section in sections:
            for fig in section.figures:
                io.write_bytes(Path(fig.path).read_bytes(), io.join(folder, fig.name))
    path = io.join(folder, "report.html")
    io.write_bytes(html.encode(), path)
    return path


def render(manifest: dict[str, Any], before: dict[str, Any] | None, sections: list[Section],
           flagged: list[dict[str, Any]], threshold: float) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html").render(
        manifest=manifest, before=before, sections=sections, flagged=flagged, threshold=threshold,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


# --- data -------------------------------------------------------------------------------

def data_section(manifest: dict[str, Any], before: dict[str, Any] | None, scratch: str) -> Section:
    section = Section("data", "Data")
    data = manifest["input"]
    days = data.get("days")
    if days:
        stacks = {b: [days[d][i] for d in days] for i, b in enumerate(S.BEHAVIORS) if any(days[d][i] for d in days)}
        section.figures.append(_draw(scratch, Figure("data_events_per_day.png", "Events kept per day, by behaviour "
                                                     "type (UTC days)."), plots.stacked_bars, list(days), stacks,
                                     title="Events per day", xlabel="day", ylabel="events"))
    else:
        section.notes.append("This run's manifest predates the per-day counts: no events-per-day chart.")
    now = _data_figures(data)
    then = _data_figures(before["input"]) if before else {}
    section.tables.append({
        "caption": "Input" + (f" (previous: dt={before['dt']})" if before else " (no previous run to compare)"),
        "header": ["", "this run"] + (["previous", "change"] if before else []),
        "rows": [[k, _fmt(v)] + ([_fmt(then[k]) if then.get(k) is not None else "-", _change(v, then.get(k))]
                                 if before else []) for k, v in now.items()]})
    reasons = data.get("quarantine_reasons") or {}
    if reasons:
        section.figures.append(_draw(scratch, Figure("data_quarantine.png", "Quarantined input rows by reason."),
                                     plots.bar_chart, {r: {"rows": n} for r, n in reasons.items()},
                                     title="Quarantined rows", ylabel="rows"))
        if (manifest.get("privacy") or {}).get("pseudonymized"):  # a raw row holds the raw user id
            section.notes.append("Examples of quarantined rows are not shown: this run pseudonymises user ids, "
                                 "and a raw row holds the raw id.")
        else:
            section.tables.append({"caption": "Quarantined rows, a few per reason",
                                   "header": ["reason", "file", "row"],
                                   "rows": quarantine_examples(data["prepared"], list(reasons))})
    elif data.get("quarantined") == 0:
        section.notes.append("No input row was quarantined.")
    return section


def _data_figures(data: dict[str, Any]) -> dict[str, int | None]:
    return {"events kept": data.get("events"), "users": data.get("users"), "items": data.get("items"),
            "rows quarantined": data.get("quarantined"), "duplicates removed": data.get("duplicates_removed"),
            "events of forgotten users": data.get("forgotten")}


def quarantine_examples(prepared: str, reasons: list[str]) -> list[list[str]]:
    """Up to :data:`EXAMPLES` quarantined rows per reason, read until each has its few."""
    folder = io.join(prepared, "quarantine", "events")
    if not io.exists(folder):
        return []
    fs, inner = io.filesystem(folder)
    wanted = {r: [] for r in reasons}
    for batch in pads.dataset(inner, filesystem=fs, format="parquet").to_batches(
            columns=[S.REASON, S.SOURCE_FILE, S.RECORD]):
        for row in batch.to_pylist():
            got = wanted.setdefault(row[S.REASON], [])
            if len(got) < EXAMPLES:
                got.append([row[S.REASON], os.path.basename(row[S.SOURCE_FILE]), row[S.RECORD][:200]])
        if all(len(v) >= EXAMPLES for v in wanted.values()):
            break
    return [row for rows in wanted.values() for row in rows]


# --- quality ----------------------------------------------------------------------------

def quality_section(manifest: dict[str, Any], scratch: str) -> Section:
    section = Section("quality", "Quality")
    for task, ev in manifest.get("evaluation", {}).items():
        metrics = ev.get("metrics") or {}
        groups = metric_groups(metrics)
        if groups:
            protocol = ev.get("protocol") or evaluation_file(manifest, task).get("protocol") or {}
            results = published_beside(groups, protocol, manifest["input"].get("public_dataset"))
            caption = f"{task}: test metrics, the model beside its baselines"
            if results:
                caption += (f" and, hatched, the results published on this file ({manifest['input']['public_dataset']}"
                            f", same protocol)")
                names = list(dict.fromkeys(k for r in results for k in r.metrics))
                section.tables.append({"caption": f"{task}: published results on this file",
                                       "header": ["model", *names, "source"],
                                       "rows": [[r.model, *(_fmt(r.metrics.get(k)) for k in names), r.source]
                                                for r in results]})
            section.figures.append(_draw(scratch, Figure(f"quality_{task}_test.png",
                                                         f"{caption}. Gate: {ev['gate']['why']}."),
                                         plots.bar_chart, groups, title=f"{task}: test", ylabel="metric",
                                         hatched=[published_name(r) for r in results]))
        else:
            section.notes.append(f"{task}: {ev.get('gate', {}).get('why', 'not evaluated')}.")
        metric, best_epoch, history = training_history(manifest["models"].get(task, {}).get("run"))
        if history:
            section.figures.extend(curves(task, metric, best_epoch, history, scratch))
    return section


def metric_groups(metrics: dict[str, Any], limit: int = 4) -> dict[str, dict[str, float]]:
    """{metric: {method: value}} of the metrics every method reports (at most ``limit``),
    from an evaluation's {method: {metric: value}}."""
    methods = {m: v for m, v in metrics.items() if isinstance(v, dict) and m not in ("protocol", "few_shot")}
    names = [k for k, v in methods.get("model", {}).items()
             if isinstance(v, (int, float)) and k not in NOT_METRICS and not k.endswith("_se")]
    shared = [k for k in names if all(isinstance(v.get(k), (int, float)) for v in methods.values())]
    return {k: {m: float(v[k]) for m, v in methods.items()} for k in shared[:limit]}


def published_name(result: published.Result) -> str:
    return f"{result.model} (published)"


def published_beside(groups: dict[str, dict[str, float]], protocol: dict[str, Any],
                     dataset: str | None) -> tuple[published.Result, ...]:
    """Add to ``groups`` the results published on the run's input, where it is one of the
    public files (the manifest's ``public_dataset``) and the evaluation's protocol is
    theirs: full ranking of the test split's first target, seen items masked. Returns
    the results drawn."""
    if not dataset or protocol.get("ranking") != "full" or not protocol.get("mask_seen") \
            or protocol.get("split") != "test" or protocol.get("target") != "first":
        return ()
    drawn = tuple(r for r in published.for_dataset(dataset) if set(r.metrics) & set(groups))
    for r in drawn:
        for metric, value in r.metrics.items():
            if metric in groups:
                groups[metric][published_name(r)] = value
    return drawn


def training_history(run: str | None) -> tuple[str, int, list[dict[str, Any]]]:
    """(the run's early-stopping metric, its best epoch (-1: the untrained model), the
    epochs it reported), read from its last checkpoint's state; refit epochs excluded.
    Runs from before the state kept its reports have no history: ("", -1, [])."""
    if not run or not io.exists(run):
        return "", -1, []
    try:
        state = ckpt.load_state(ckpt.latest_checkpoint(run))
    except io.InputError:
        return "", -1, []
    metric = (state.get("config") or {}).get("train", {}).get("metric", "")
    history = [r for r in state.get("history", []) if "refit" not in r and "epoch" in r]
    return metric, int(state.get("best_epoch", -1)), history


def curves(task: str, metric: str, best_epoch: int, history: list[dict[str, Any]], scratch: str) -> list[Figure]:
    """The loss and the validation metric per epoch, the best epoch ringed."""
    epochs = [r["epoch"] + 1 for r in history]
    ticks = {"xticks": epochs} if len(epochs) <= 15 else {}  # whole epochs, not 0.96 ... 1.04
    figures = []
    losses = [(e, r["loss"]) for e, r in zip(epochs, history) if _finite(r.get("loss"))]
    if losses:
        figures.append(_draw(scratch, Figure(f"quality_{task}_loss.png", f"{task}: training loss per epoch."),
                             plots.line_chart, {"loss": tuple(zip(*losses))}, title=f"{task}: training loss",
                             xlabel="epoch", ylabel="loss", **ticks))
    points = [(e, r[f"valid/{metric}"]) for e, r in zip(epochs, history) if _finite(r.get(f"valid/{metric}"))]
    if points:
        best = [p for p in points if p[0] == best_epoch + 1]
        kept = (f"the ring marks the best epoch ({best_epoch + 1}), whose weights were kept" if best else
                "no epoch beat the untrained model, whose weights were kept" if best_epoch < 0 else
                f"the weights of epoch {best_epoch + 1} were kept")
        figures.append(_draw(scratch, Figure(f"quality_{task}_valid.png", f"{task}: validation {metric} per epoch; "
                                             f"{kept}."), plots.line_chart, {metric: tuple(zip(*points))},
                             title=f"{task}: validation", xlabel="epoch", ylabel=metric,
                             marks={"best epoch": best[0]} if best else None, **ticks))
    return figures


# --- calibration ------------------------------------------------------------------------

def evaluation_file(manifest: dict[str, Any], task: str) -> dict[str, Any]:
    """A task's whole evaluation (its ``metrics_test.json``; the manifest keeps the
    headline numbers only), or {} where it was not evaluated."""
    path = (manifest.get("evaluation", {}).get(task) or {}).get("file")
    return io.read_json(path) if path and io.exists(path) else {}


CALIBRATED = {"tags": "the tags' probabilities (user_tags)",
              "next_behavior": "the next behaviour's probability (user_next_actions)"}


def calibration_section(manifest: dict[str, Any], scratch: str) -> Section:
    """Reliability diagrams from the evaluation step's held-out labels (each evaluation
    file's ``calibration``), not from the published scores, which have no labels."""
    section = Section("calibration", "Calibration")
    for task in manifest.get("evaluation", {}):
        for what, diagram in (evaluation_file(manifest, task).get("calibration") or {}).items():
            if not diagram.get("bins"):
                continue
            of = diagram.get("of", "")
            section.figures.append(_draw(scratch, Figure(
                f"calibration_{what}.png", f"{task}: reliability of {CALIBRATED.get(what, what)}"
                f"{f', {of}' if of else ''}, on the test users' held-out events. Expected calibration error "
                f"{diagram['ece']:.3f}: the mean gap between the predicted and the observed rate."),
                plots.reliability_chart, {what: diagram}, title=f"{task}: calibration"))
    if not section.figures:
        section.notes.append("No evaluation with probabilities to check (tags, sequence) in this run.")
    return section


# --- outputs ----------------------------------------------------------------------------

def outputs_section(out: str, manifest: dict[str, Any], scratch: str) -> Section:
    section = Section("outputs", "Outputs")
    summary = manifest.get("summary", {})
    coverage = {t: {"coverage": s["catalogue_coverage"]} for t, s in summary.items() if "catalogue_coverage" in s}
    if coverage:
        section.figures.append(_draw(scratch, Figure("outputs_coverage.png", "Catalogue coverage: the share of "
                                                     "items recommended to anyone, per table."),
                                     plots.bar_chart, coverage, title="Catalogue coverage", ylabel="share of items"))
    curve = popularity_curve(out, manifest)
    if curve:
        section.figures.append(_draw(scratch, Figure(
            "outputs_popularity_bias.png", "Popularity bias: items in deciles of how often users interacted with "
            "them (1: the least popular tenth), and each decile's share of the interactions and of the "
            "recommendations. Recommendations above the interactions' line favour that decile."),
            plots.line_chart, curve, title="Popularity bias", xlabel="item popularity decile",
            ylabel="share", xticks=range(1, POPULARITY_BINS + 1)))
    for table, caption in (("user_tags", "Tags: the share of users whose first tag each is (top 15)."),
                           ("user_next_actions", "Next behaviour: the share of users for whom each behaviour is "
                                                 "the most likely next one.")):
        shares = summary.get(table, {}).get("top1_shares")
        if shares:
            top = dict(sorted(shares.items(), key=lambda kv: -kv[1])[:15])
            section.figures.append(_draw(scratch, Figure(f"outputs_{table}_shares.png", caption), plots.bar_chart,
                                         {k: {"share": v} for k, v in top.items()}, title=table, ylabel="share"))
    few = evaluation_file(manifest, "zeroshot").get("few_shot")
    if few and any(few.values()):
        series = {f"from {kind}": ([int(n) for n in v], [v[n] for n in v]) for kind, v in few.items()
                  if v and all(x is not None for x in v.values())}
        section.figures.append(_draw(scratch, Figure("outputs_zeroshot_few_shot.png", "Zero-shot: held-out tags' "
                                                     "AUC against the number of example items or users given."),
                                     plots.line_chart, series, title="Zero-shot: few-shot curve",
                                     xlabel="examples", ylabel="AUC"))
    elif "zeroshot" in manifest.get("models", {}):
        section.notes.append("Zero-shot: no few-shot curve; it needs held-out tags to evaluate on "
                             "(tasks.zeroshot.config.holdout).")
    night = manifest.get("incremental") or {}
    if night.get("carried_from"):
        section.notes.append(f"An incremental night: the {night['scored_users']:,} users with new events were "
                             f"scored; the other {night['carried_users']:,} users' rows were carried over "
                             f"unchanged from run {night['carried_from']}.")
    sources = {t: s.get("sources", {}) for t, s in summary.items()}
    section.tables.append({"caption": "Rows per source (model, or the fallback used)", "header": ["table", "source",
                                                                                                  "rows"],
                           "rows": [[t, k, f"{n:,}"] for t, s in sources.items() for k, n in s.items()]})
    return section


def popularity_curve(out: str, manifest: dict[str, Any]) -> dict[str, tuple[list[int], list[float]]]:
    """{"interactions": (deciles, shares), "recommendations": (deciles, shares)}: items cut
    into deciles by their interaction count in the prepared events, and each decile's share
    of the interactions and of the published recommendations. Both are counted per item
    while streaming, so memory follows the catalogue, not the events."""
    table = manifest.get("tables", {}).get("user_recommendations")
    vocab_path = io.join(manifest["input"]["prepared"], "vocab", "items.parquet")
    if not table or not io.exists(vocab_path):
        return {}
    vocab = io.read_parquet(vocab_path, columns=[S.ITEM_ID, "count"])
    interactions = vocab.column("count").to_numpy().astype(np.float64)
    recommended = np.zeros(len(interactions))
    location = W.current(out, "user_recommendations", manifest["dt"])
    folder = location["location"] if location else table["path"]
    fs, inner = io.filesystem(folder)
    for batch in pads.dataset(inner, filesystem=fs, format="parquet").to_batches(columns=[S.ITEM_ID]):
        idx = pc.index_in(batch.column(0), value_set=vocab.column(S.ITEM_ID)).to_numpy(zero_copy_only=False)
        idx = idx[~np.isnan(idx)].astype(np.int64) if idx.dtype.kind == "f" else idx
        np.add.at(recommended, idx, 1)
    if not interactions.sum() or not recommended.sum():
        return {}
    order = np.argsort(interactions, kind="stable")  # least popular first
    bins = np.array_split(order, POPULARITY_BINS)
    deciles = list(range(1, POPULARITY_BINS + 1))
    return {"interactions": (deciles, [float(interactions[b].sum() / interactions.sum()) for b in bins]),
            "recommendations": (deciles, [float(recommended[b].sum() / recommended.sum()) for b in bins])}


# --- drift ------------------------------------------------------------------------------

def drift_rows(manifest: dict[str, Any], before: dict[str, Any] | None, threshold: float) -> list[dict[str, Any]]:
    """Each figure against the previous day's: test metrics, output statistics, input
    sizes. ``flagged`` where it moved by more than ``threshold`` (relative; the rank-1
    mix's total variation, already a share, is compared as it is)."""
    if before is None:
        return []
    rows = []

    def add(what: str, now: float | None, then: float | None, *, absolute: bool = False):
        if now is None or then is None:
            return
        change = now - then if absolute else (now - then) / abs(then) if then else (0.0 if now == then else 1.0)
        rows.append({"what": what, "now": now, "then": then, "change": change, "absolute": absolute,
                     "flagged": abs(change) > threshold})

    for task, ev in manifest.get("evaluation", {}).items():
        then = before.get("evaluation", {}).get(task) or {}
        old = then.get("metrics") or {}
        for metric, values in metric_groups(ev.get("metrics") or {}).items():
            add(f"{task}: test {metric} (model)", values.get("model"), (old.get("model") or {}).get(metric))
        for what, ece in (ev.get("ece") or {}).items():
            add(f"{task}: calibration error of {what}", ece, (then.get("ece") or {}).get(what), absolute=True)
    for table, d in (manifest.get("drift") or {}).items():
        if "top1_total_variation" in d:
            rows.append({"what": f"{table}: rank-1 mix, total variation", "now": d["top1_total_variation"],
                         "then": 0.0, "change": d["top1_total_variation"], "absolute": True,
                         "flagged": d["top1_total_variation"] > threshold})
    for table, s in manifest.get("summary", {}).items():
        add(f"{table}: catalogue coverage", s.get("catalogue_coverage"),
            before.get("summary", {}).get(table, {}).get("catalogue_coverage"))
    for key in ("events", "users", "items", "quarantined"):
        add(f"input: {key}", manifest["input"].get(key), before["input"].get(key))
    return sorted(rows, key=lambda r: (not r["flagged"], -abs(r["change"])))


def drift_section(changes: list[dict[str, Any]], before: dict[str, Any] | None, threshold: float) -> Section:
    section = Section("drift", "Drift")
    if before is None:
        section.notes.append("No earlier published day to compare with: this is the first.")
        return section
    section.tables.append({
        "caption": f"Against dt={before['dt']} (run {before['run_id']}); changes past {threshold:.0%} are marked",
        "header": ["figure", "this run", "previous", "change"],
        "rows": [[c["what"], _fmt(c["now"]), _fmt(c["then"]),
                  (f"{c['change']:+.4f}" if c["absolute"] else f"{c['change']:+.1%}") + (" !" if c["flagged"] else "")]
                 for c in changes]})
    return section


# --- helpers ----------------------------------------------------------------------------

def _draw(scratch: str, figure: Figure, draw, *args, **kwargs) -> Figure:
    figure.path = draw(os.path.join(scratch, figure.name), *args, **kwargs)
    return figure


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and np.isfinite(x)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,}" if isinstance(x, int) else f"{x:.4f}"


def _change(now: int | None, then: int | None) -> str:
    if now is None or then is None:
        return "-"
    return f"{now - then:+,}" + (f" ({(now - then) / then:+.1%})" if then else "")
