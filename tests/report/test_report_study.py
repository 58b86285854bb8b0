"""`ferens report` over a synthetic 30-run study: leaderboard, study groups, plots that scale."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binomtest, false_discovery_control

from ferens.classes import CLASS_NAMES
from ferens.errors import FerensError
from ferens.io import write_json
from ferens.report.build import compute_metrics, load_runs, write_report
from ferens.report.groups import find_groups
from ferens.report.recipes import recipe
from ferens.runs import Predictions, save_predictions

K = len(CLASS_NAMES)
N = 210
CHROMIUM = "/usr/bin/chromium"
BASE = {"model": "resnet18", "width": 0.5, "augment": "strong", "imbalance": "none",
        "label_smoothing": 0.0, "optimizer": "adamw", "lr": 0.002, "epochs": 20, "tta": "flip",
        "seed": 0}
# name -> the fields that differ from BASE ("drop_rate" and "ema_decay" are not in BASE: a
# missing field counts as a value of its own, or as its old default for fields added later)
MEMBERS = {
    **{f"base-s{s}": {"seed": s} for s in range(5)},
    **{f"imb-{v}": {"imbalance": v} for v in ("weighted", "focal", "oversample")},
    **{f"width-{w}": {"width": w} for w in (0.25, 1.0)},
    **{f"light-s{s}": {"augment": "light", "seed": s} for s in range(3)},
    "epochs-10": {"epochs": 10}, "epochs-40": {"epochs": 40}, "ls-0.1": {"label_smoothing": 0.1},
    "drop-0.1": {"drop_rate": 0.1}, "ema": {"ema_decay": 0.999}, "tta-none": {"tta": "none"},
    "r34-e14": {"model": "resnet34", "epochs": 14}, "sgd": {"optimizer": "sgd", "lr": 0.05},
}
METHODS = ("mean", "logit-mean", "weighted", "greedy", "stack")
SEED_RUNS = [f"base-s{s}" for s in range(5)]
EXPECTED_GROUPS = {
    ("seed", tuple(SEED_RUNS)),
    ("seed", ("light-s0", "light-s1", "light-s2")),
    ("imbalance", (*SEED_RUNS, "imb-focal", "imb-oversample", "imb-weighted")),
    ("width", (*SEED_RUNS, "width-0.25", "width-1.0")),
    ("augment", (*SEED_RUNS, "light-s0", "light-s1", "light-s2")),
    ("epochs", (*SEED_RUNS, "epochs-10", "epochs-40")),
    ("label_smoothing", (*SEED_RUNS, "ls-0.1")),
    ("drop_rate", (*SEED_RUNS, "drop-0.1")),
    ("ema_decay", (*SEED_RUNS, "ema")),
    ("tta", (*SEED_RUNS, "tta-none")),
    ("method", tuple(sorted(f"all-{m}" for m in METHODS))),
    ("members", ("all-mean", "seed-mean")),
}


def predictions(seed: int) -> Predictions:
    """Runs share labels (as real runs do); each hits the true class with its own rate."""
    labels = np.concatenate([np.arange(K), np.random.default_rng(0).integers(0, K, N - K)])
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(N, K)).astype(np.float32)
    hit = rng.random(N) < rng.uniform(0.35, 0.8)
    logits[np.flatnonzero(hit), labels[hit]] += 4.0
    return Predictions(logits, labels.astype(np.int64), np.arange(N))


def write_run(folder: Path, config: dict, preds: Predictions, summary: dict | None = None):
    for split in ("val", "test"):
        save_predictions(folder / "predictions" / f"{split}.npz", preds)
    write_json(folder / "config.json", config)
    write_json(folder / "summary.json", {"name": config["name"], **(summary or {})})
    return folder


def write_study(root: Path) -> dict[str, Predictions]:
    """21 members, 6 ensembles and 3 adjusted runs: 30 runs.

    Bookkeeping (threads, out_dir, device, data) differs from run to run, as in real studies.
    """
    preds = {}
    for i, (name, changes) in enumerate(MEMBERS.items()):
        preds[name] = predictions(i)
        config = {"name": name, "out_dir": f"runs{i % 3}", "data": f"/data/{i}.csv",
                  "threads": 1 + i % 2, "device": "cpu" if i % 2 else "cuda", **BASE, **changes}
        write_run(root / "members" / name, config, preds[name], {"train_minutes": 10.0 + i})
    all_members = list(MEMBERS)
    for j, (name, method, chosen) in enumerate(
            [(f"all-{m}", m, all_members) for m in METHODS] + [("seed-mean", "mean", SEED_RUNS)]):
        preds[name] = predictions(100 + j)
        config = {"kind": "ensemble", "name": name, "method": method,
                  "members": [{"name": m, "path": f"{root}/members/{m}"} for m in chosen],
                  "options": {"temperature": False, "seed": 0}}
        write_run(root / "ensembles" / name, config, preds[name], {"kind": "ensemble"})
    # the second source path was written from another folder: found by its folder name
    for j, source in enumerate((root / "members/base-s0", Path("elsewhere/members/width-1.0"),
                                root / "ensembles/all-stack")):
        name = f"{source.name}-adjusted"
        preds[name] = predictions(200 + j)
        config = {"kind": "adjusted", "name": name, "source": str(source),
                  "tau": 0.5 + j / 4, "log_prior": [-2.0] * K, "select": "accuracy-budget"}
        write_run(root / "adjusted" / name, config, preds[name], {"kind": "adjusted"})
    return preds


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    preds = write_study(root)
    out = root / "report"
    metrics = write_report([root / "members" / "*", root / "ensembles" / "*",
                            root / "adjusted" / "*"], out=out, n_boot=100)
    return root, out, metrics, preds


def accuracy(p: Predictions) -> float:
    return float((p.logits.argmax(axis=1) == p.labels).mean())


# --- leaderboard -----------------------------------------------------------------------------

def test_leaderboard_lists_every_run_sorted_with_tests_against_the_best(study):
    _, _, metrics, preds = study
    rows = metrics["leaderboard"]["rows"]
    assert len(rows) == 30 == len(preds)
    expected = sorted(preds, key=lambda name: -accuracy(preds[name]))
    assert [r["accuracy"] for r in rows] == pytest.approx(
        [accuracy(preds[n]) for n in expected])
    best = preds[rows[0]["name"]]
    assert rows[0]["vs_best"] is None
    right_best = best.logits.argmax(axis=1) == best.labels
    p_values = []
    for r in rows[1:]:
        right = preds[r["name"]].logits.argmax(axis=1) == best.labels
        a, b = int((right & ~right_best).sum()), int((~right & right_best).sum())
        p_values.append(binomtest(a, a + b, 0.5).pvalue if a + b else 1.0)
    assert [r["vs_best"]["p_value"] for r in rows[1:]] == pytest.approx(p_values)
    assert [r["vs_best"]["q_value"] for r in rows[1:]] == pytest.approx(
        false_discovery_control(p_values))
    kinds = {r["name"]: r["kind"] for r in rows}
    assert [kinds[n] for n in ("base-s0", "all-stack", "base-s0-adjusted")] == [
        "member", "ensemble", "adjusted"]


def test_leaderboard_sorts_by_the_chosen_metric(study):
    runs = load_runs([study[0] / "members" / "*"])
    metrics = compute_metrics(runs, n_boot=20, sort="nll")
    nll = [r["value"] for r in metrics["leaderboard"]["rows"]]
    assert len(nll) == len(MEMBERS) and nll == sorted(nll)
    assert metrics["leaderboard"]["higher_is_better"] is False
    with pytest.raises(FerensError, match="unknown --sort"):
        compute_metrics(runs, n_boot=20, sort="speed")


# --- study groups ----------------------------------------------------------------------------

def test_groups_are_the_runs_that_differ_in_one_config_field(study):
    _, _, metrics, _ = study
    found = {(g["field"], tuple(sorted(r["name"] for r in g["rows"])))
             for g in metrics["groups"]}
    assert found == EXPECTED_GROUPS
    kinds = [g["kind"] for g in metrics["groups"]]
    assert kinds[:2] == ["seed", "seed"]


def test_seed_group_shows_mean_sd_and_range_computed_independently(study):
    _, out, metrics, preds = study
    accuracies = np.array([accuracy(preds[n]) for n in SEED_RUNS])
    mean, sd = accuracies.mean(), accuracies.std(ddof=1)
    group = next(g for g in metrics["groups"]
                 if g["kind"] == "seed" and len(g["rows"]) == len(SEED_RUNS))
    stats = group["seed_stats"]["accuracy"]
    assert (stats["mean"], stats["sd"]) == pytest.approx((mean, sd))
    assert stats["range"] == pytest.approx(accuracies.max() - accuracies.min())
    assert group["seed_ensemble"]["name"] == "seed-mean"
    row = f"| accuracy | {mean:.4f} | {sd:.4f} | {accuracies.min():.3f} | {accuracies.max():.3f}"
    assert row in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert f"<td class=\"num\">{mean:.4f}</td><td class=\"num\">{sd:.4f}</td>" in page


def test_seed_replicates_are_pooled_in_the_other_groups(study):
    _, _, metrics, preds = study
    group = next(g for g in metrics["groups"] if g["field"] == "imbalance")
    pooled = {p["value"]: p for p in group["pooled"]}
    assert pooled["none"]["n"] == 5 and pooled["weighted"]["n"] == 1
    assert pooled["none"]["accuracy"]["mean"] == pytest.approx(
        np.mean([accuracy(preds[n]) for n in SEED_RUNS]))


def test_bookkeeping_and_fitted_values_do_not_make_groups():
    member = {"name": "a", "out_dir": "runs", "threads": 1, "device": "cpu", "model": "r18",
              "seed": 0}
    moved = {**member, "name": "b", "out_dir": "elsewhere", "threads": 8, "device": "cuda"}
    assert recipe(member) == recipe(moved)
    adjusted = {"kind": "adjusted", "source": "x/stack", "tau": 1.0, "log_prior": [0.0],
                "select": "macro-f1"}
    assert recipe(adjusted) == recipe({**adjusted, "tau": 2.0, "source": "y/stack"})
    fixed = {**adjusted, "select": "fixed"}
    assert recipe(fixed) != recipe({**fixed, "tau": 2.0})
    assert find_groups([recipe(member), recipe(moved)]) == []


def test_member_configs_from_before_a_field_existed_get_its_old_default(tmp_path):
    from ferens.config import TrainConfig

    old = {"model": "resnet18", "seed": 0}
    assert recipe(old) == recipe({**old, "engine": 1, "ema_decay": 0.0})
    assert recipe(old) != recipe({**old, "engine": 2})
    # the same rule as TrainConfig.load: a config.json without `engine` ran engine 1, and
    # every other missing field has its default
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = TrainConfig.load(tmp_path / "config.json")
    assert loaded.engine == 1 and loaded.select_tta == "auto"
    assert recipe(old) == recipe(loaded.to_dict()) == recipe(TrainConfig(engine=1).to_dict())
    assert recipe(old) != recipe(TrainConfig(engine=1, mix_prob=0.5).to_dict())


def test_forced_group_compares_runs_whatever_else_differs(study):
    runs = load_runs([study[0] / "members" / "*"])
    metrics = compute_metrics(runs, n_boot=20, group=["model"])
    forced = metrics["groups"][0]
    assert (forced["field"], forced["kind"]) == ("model", "forced")
    assert len(forced["rows"]) == len(MEMBERS)
    assert "epochs" in forced["varying"] and "seed" not in forced["varying"]
    with pytest.raises(FerensError, match="--group colour: no run's config has this field"):
        compute_metrics(runs, n_boot=20, group=["colour"])


def test_adjusted_runs_are_set_against_their_sources(study):
    _, _, metrics, preds = study
    pairs = {p["name"]: p for p in metrics["adjustments"]}
    assert set(pairs) == {"base-s0-adjusted", "width-1.0-adjusted", "all-stack-adjusted"}
    pair = pairs["all-stack-adjusted"]
    assert pair["source"] == "all-stack"
    assert pair["before"]["accuracy"] == pytest.approx(accuracy(preds["all-stack"]))


# --- the written report ----------------------------------------------------------------------

def test_report_and_markdown_open_with_the_leaderboard_and_groups(study):
    _, out, metrics, _ = study
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    html_h2 = [html.unescape(h) for h in re.findall(r"<h2>(.*?)</h2>", page)]
    md_h2 = [h for h in re.findall(r"^## (.*)$", md, re.M)]
    assert html_h2 == md_h2
    assert html_h2[:2] == ["Leaderboard", "Study groups"]
    board = md.split("## Leaderboard")[1].split("## ")[0]
    names = [line.split(" | ")[1] for line in board.splitlines() if re.match(r"\| \d+ \|", line)]
    assert names == [r["name"] for r in metrics["leaderboard"]["rows"]]
    assert list(metrics)[list(metrics).index("leaderboard") + 1] == "groups"
    details = page.index("<details>")
    assert page.index("Details: the runs and their folders") > details
    assert str(out.parent / "members" / "base-s0") in page[details:]
    assert str(out.parent / "members" / "base-s0") not in page[:page.index("<h2>Study groups")]


def test_plots_scale_with_the_number_of_runs(study):
    root, out, metrics, _ = study
    top = [r["name"] for r in metrics["leaderboard"]["rows"][:6]]
    assert metrics["detailed_runs"] == top
    confusion = sorted(p.name for p in out.glob("*_confusion.png"))
    assert len(confusion) == 6 and all(any(n in c for n in top) for c in confusion)
    with Image.open(out / "per_class_recall.png") as im:
        assert im.height > 0.25 * 30 * 90        # one heatmap row per run, not 30 bars/class
    page = (out / "report.html").read_text()
    rest = page[page.index("<details>"):page.index("</details>")]
    assert all(f"Run: {r['name']}</h2>" in rest for r in metrics["leaderboard"]["rows"][6:])
    shown = compute_metrics(load_runs([root / "members" / "*"]), n_boot=20, top=2,
                            show=["light-*"])
    best = [r["name"] for r in shown["leaderboard"]["rows"][:2]]
    assert set(shown["detailed_runs"]) == {*best, "light-s0", "light-s1", "light-s2"}


def test_a_new_report_replaces_an_earlier_one_whole_and_refuses_a_users_folder(study,
                                                                              tmp_path):
    root = study[0]
    runs = [root / "members" / "base-s0", root / "members" / "base-s1"]
    out = write_report_dir(runs, tmp_path / "rep")
    assert len(list(out.glob("*_confusion.png"))) == 2
    write_report_dir(runs[:1], out)
    assert [p.name for p in out.glob("*_confusion.png")] == ["01_base-s0_confusion.png"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FerensError, match="refusing to replace it"):
        write_report_dir(runs, mine)
    assert (mine / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "rep"]


def write_report_dir(runs, out):
    from ferens.report.build import write_report

    write_report(runs, out=out, n_boot=10)
    return out


def test_runs_are_selected_by_glob_patterns(study):
    root = study[0]
    runs = load_runs([root / "members" / "base-*", root / "members" / "base-s[01]",
                      root / "ensembles" / "seed-*", root / "members" / "sgd"])
    assert [r.name for r in runs] == [*SEED_RUNS, "seed-mean", "sgd"]
    with pytest.raises(FerensError, match="no run folder"):
        load_runs([root / "members" / "nothing-*"])


def test_cli_prints_the_leaderboard_and_refuses_a_bad_sort(study, tmp_path, monkeypatch,
                                                           capsys):
    from conftest import run_cli

    root, _, metrics, _ = study
    code, stdout, _ = run_cli(["report", str(root / "ensembles" / "*"), "--out",
                               tmp_path / "rep", "--sort", "macro_f1", "--top", "1"],
                              monkeypatch, capsys)
    assert code == 0
    lines = [line.split() for line in stdout.splitlines() if re.match(r"\s+\d+\s", line)]
    f1 = [float(cells[4]) for cells in lines]
    assert len(f1) == 6 and f1 == sorted(f1, reverse=True)
    code, _, stderr = run_cli(["report", str(root / "ensembles" / "*"), "--out",
                               tmp_path / "rep", "--sort", "speed"], monkeypatch, capsys)
    assert code == 2 and stderr.count("\n") == 1 and "unknown --sort" in stderr


PROBE = """<script>
window.addEventListener("load", () => {
  const body = document.body.getBoundingClientRect();
  const tables = [...document.querySelectorAll("table")].map(t => t.getBoundingClientRect());
  const board = [...document.querySelector("h2 ~ table").tBodies[0].rows]
    .map(r => r.cells[3].textContent);
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    inner: window.innerWidth, page: document.documentElement.scrollWidth,
    content: body.width - 32, right: Math.max(...tables.map(t => t.right)),
    widest: Math.max(...tables.map(t => t.width)), tables: tables.length, board});
  document.body.appendChild(probe);
});
</script>"""


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
def test_thirty_run_report_renders_in_chromium_with_no_table_wider_than_the_page(study,
                                                                                 tmp_path):
    """The DOM after layout at 1280 px: every table fits the page; the leaderboard is sorted.

    A copy of the page gets a probe script (the report itself has none) that writes what the
    browser laid out into the DOM, which headless Chromium then dumps.
    """
    _, out, metrics, _ = study
    page = tmp_path / "probe.html"
    page.write_text((out / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1000",
         "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()],
        check=True, capture_output=True, text=True, timeout=120).stdout
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    layout = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)[1]))
    assert layout["inner"] == 1280 and layout["tables"] > 20
    assert layout["widest"] <= layout["content"] + 1
    assert layout["right"] <= layout["inner"] and layout["page"] <= layout["inner"]
    shown = [float(cell.split()[0]) for cell in layout["board"]]
    assert len(shown) == 30 and shown == sorted(shown, reverse=True)
    assert shown == [round(r["accuracy"], 3) for r in metrics["leaderboard"]["rows"]]
