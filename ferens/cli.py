"""The `ferens` command line: a thin typer layer over the library API."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ferens.errors import FerensError

# Small numpy/scikit-learn work: one BLAS thread each, else a busy 2-core box slows 30x.
SINGLE_THREAD_COMMANDS = ("ensemble", "adjust", "report", "study")

# rich_markup_mode=None: help texts print as written. Rich markup would eat every bracketed
# default ("Parent folder of runs [runs]." printed as "Parent folder of runs .").
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Facial-expression recognition on FER2013.")


@app.command("train-member")
def train_member_cmd(
    config: Path | None = typer.Option(None, help="Config file (.json or .toml); flags override."),
    name: str | None = typer.Option(None, help="Run name: output goes to OUT_DIR/NAME."),
    out_dir: str | None = typer.Option(None, help="Parent folder of runs [runs]."),
    data: str | None = typer.Option(
        None, envvar="FERENS_DATA",
        help="fer2013.csv(.gz), or an image folder: train/<class>/*, optional val/ and test/ "
             "(any class names)."),
    val_fraction: float | None = typer.Option(
        None, help="Image folder without val/: hold out this stratified share of train/ [0]."),
    test_fraction: float | None = typer.Option(
        None, help="Image folder without test/: hold out this stratified share of train/ [0]."),
    labels: str | None = typer.Option(None, help="fer2013 | ferplus"),
    ferplus: str | None = typer.Option(None, help="FER+ fer2013new.csv (with --labels ferplus)."),
    model: str | None = typer.Option(None, help="timm ResNet name [resnet18]."),
    stem: str | None = typer.Option(None, help="default (4x) | s2 (2x) | s1 (1x)."),
    width: float | None = typer.Option(
        None, help="Width multiplier of the 4 stages' channels [1.0]; a plain ResNet's stem "
                   "stays 64 channels (only deep-stem models such as resnet18d scale it)."),
    init: str | None = typer.Option(
        None, help="Start from a ferens model: a run folder, a bundle, BUNDLE/members/<i>, or "
                   "default (the shipped model); its model, stem, width and input size are "
                   "used unless given."),
    pretrained: str | None = typer.Option(
        None, help="Starting weights: a local .safetensors/.pth file, or timm / timm:TAG for "
                   "timm's published ones from the local cache (never downloaded)."),
    backbone_lr_scale: float | None = typer.Option(
        None, help="Learning rate of everything but the head, relative to --lr [1.0]."),
    freeze_backbone_epochs: int | None = typer.Option(
        None, help="Train only the classifier head for the first N epochs [0]."),
    augment: str | None = typer.Option(
        None, help="none | light | strong | torch-light | torch-strong."),
    imbalance: str | None = typer.Option(None, help="none | weighted | focal | oversample."),
    label_smoothing: float | None = typer.Option(None, help="Label smoothing [0]."),
    epochs: int | None = typer.Option(None, help="Epochs [20]."),
    batch_size: int | None = typer.Option(None, help="Batch size [64]."),
    lr: float | None = typer.Option(None, help="Peak learning rate."),
    optimizer: str | None = typer.Option(None, help="adamw | sgd."),
    tta: str | None = typer.Option(
        None, help="none | flip | shift | tencrop (for saved predictions)."),
    select_tta: str | None = typer.Option(
        None, help="TTA picking the best epoch: auto (=--tta) | none | flip | shift | tencrop."),
    seed: int | None = typer.Option(None, help="Random seed [0]."),
    threads: int | None = typer.Option(None, help="CPU threads (0 = auto)."),
    max_train_samples: int | None = typer.Option(None, help="Stratified training subset size."),
    device: str | None = typer.Option(None, help="auto | cpu | cuda | cuda:N [auto]."),
    precision: str | None = typer.Option(
        None, help="auto | fp32 | bf16 | fp16 [auto: bf16 on a CUDA GPU, fp32 on the CPU]."),
    workers: int | None = typer.Option(None, help="Loader worker processes (0 = in-process)."),
    compile: bool | None = typer.Option(None, "--compile/--no-compile",
                                        help="torch.compile the model [off]."),
    crop_size: int | None = typer.Option(None, help="Random crops of this size (0 = none)."),
    ema_decay: float | None = typer.Option(None, help="EMA of the weights (0 = off)."),
    mixup_alpha: float | None = typer.Option(None, help="Mixup Beta alpha (0 = off)."),
    cutmix_alpha: float | None = typer.Option(None, help="CutMix Beta alpha (0 = off)."),
    mix_prob: float | None = typer.Option(None, help="Share of batches mixed [1.0]."),
    alternate_flip: bool | None = typer.Option(None, "--alternate-flip/--random-flip",
                                               help="Flip every other epoch, not at random."),
    ferplus_soft: float | None = typer.Option(
        None, help="Weight of FER+ vote shares in the training targets (needs --ferplus)."),
    teacher: str | None = typer.Option(
        None, help="Run or ensemble folder whose predictions/train.npz to distil from."),
    distill_weight: float | None = typer.Option(None, help="Weight of the teacher term [0.5]."),
    distill_temperature: float | None = typer.Option(None, help="Distillation T [2.0]."),
    set_: list[str] = typer.Option([], "--set", help="Any config field: --set focal_gamma=1.5"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Train one ensemble member and write runs/NAME (predictions, metrics, summary)."""
    from ferens.config import TrainConfig, load_config_file, parse_overrides
    from ferens.train.member import train_member

    values = load_config_file(config) if config else {}
    flags = {k: v for k, v in locals().items()
             if k in TrainConfig.__dataclass_fields__ and v is not None}
    sets = parse_overrides(set_)
    name_from = ("from --name" if name else "from --set name" if "name" in sets
                 else f"from --config {config}" if "name" in values else None)
    values |= flags | sets
    if values.get("init"):  # the architecture of the model fine-tuned, unless given
        from ferens.models.initialise import init_architecture

        values = init_architecture(str(values["init"])) | values
    derived = name_from is None  # never a silent default: say which name the run gets, and why
    if derived:
        values["name"] = config.stem if config else TrainConfig.name
        name_from = (f"taken from the file name of --config {config}" if config
                     else "ferens' default, as no --name was given")
    cfg = TrainConfig.from_dict(values)
    summary = train_member(cfg, resume=resume, show_progress=not quiet, name_from=name_from,
                           name_derived=derived)
    test = summary["test"]
    print(f"{summary['name']}: val acc {summary['val']['accuracy']:.4f}, "
          f"test acc {test['accuracy']:.4f}, test macro-F1 {test['macro_f1']:.4f}, "
          f"{summary['train_minutes']:.1f} train min, {summary['images_per_second']:.0f} img/s")
    if values.get("labels") == "ferplus":
        print("note: FER+ labels on every split: val and test are relabelled and filtered too, "
              "so these scores are not comparable with FER2013-label runs, and `ferens "
              "ensemble` keeps this member out of their ensembles")


@app.command("ensemble")
def ensemble_cmd(
    runs: list[Path] = typer.Argument(..., help="Member (or ensemble) run folders."),
    method: str = typer.Option("mean", help="mean | logit-mean | weighted | greedy | stack"),
    out: Path = typer.Option(..., help="Output folder, e.g. ensembles/NAME."),
    temperature: bool = typer.Option(False, help="Fit a temperature per member on val first."),
    greedy_metric: str = typer.Option("accuracy", help="Greedy selection metric: accuracy | nll."),
    seed: int = typer.Option(0, help="Seed for the stacker's cross-validation folds."),
) -> None:
    """Combine saved member predictions (no model is re-run); everything is fitted on val."""
    from ferens.combine.ensemble import build_ensemble

    run = build_ensemble(runs, method=method, out=out, temperature=temperature, seed=seed,
                         greedy_metric=greedy_metric)
    s = run.summary
    width = max(len(n) for n in [*s["members"], "ensemble"])
    print(f"{'run':<{width}}  val_acc  test_acc  test_F1")
    for name, m in s["member_metrics"].items():
        print(f"{name:<{width}}  {m['val']['accuracy']:7.4f}  {m['test']['accuracy']:8.4f}"
              f"  {m['test']['macro_f1']:7.4f}")
    print(f"{'ensemble':<{width}}  {s['val']['accuracy']:7.4f}  {s['test']['accuracy']:8.4f}"
          f"  {s['test']['macro_f1']:7.4f}")
    print(f"{method}: test accuracy {s['test_accuracy_gain_over_best_member']:+.4f} vs best "
          f"member {s['best_member']['name']} (by val); {s['seconds']:.1f}s -> {out}")


@app.command("adjust")
def adjust_cmd(
    run: Path = typer.Argument(..., help="A member, ensemble or adjusted run folder."),
    out: Path = typer.Option(..., help="Output folder, e.g. adjusted/NAME."),
    select: str = typer.Option("macro-f1", help="How val picks tau: macro-f1 | accuracy-budget."),
    max_accuracy_loss: float = typer.Option(
        0.01, help="accuracy-budget: val accuracy the adjustment may cost (0.01 = 1 point)."),
    tau: float | None = typer.Option(None, help="Use this tau instead of choosing one on val."),
) -> None:
    """Post-hoc logit adjustment for rare classes (tau chosen on val); writes a run folder."""
    from ferens.combine.adjust import adjust_run

    s = adjust_run(run, out, tau=tau, select=select, max_accuracy_loss=max_accuracy_loss).summary
    before = s["source_metrics"]
    print(f"tau {s['tau']:.2f} ({'given' if tau is not None else select + ' on val'})")
    print("split  accuracy          macro_F1")
    for split in ("val", "test"):
        print(f"{split:<5}  {before[split]['accuracy']:.4f} -> {s[split]['accuracy']:.4f}"
              f"  {before[split]['macro_f1']:.4f} -> {s[split]['macro_f1']:.4f}")
    recall_before, recall = before["test"]["per_class_recall"], s["test"]["per_class_recall"]
    print("test recall: " + ", ".join(f"{c} {recall_before[c]:.3f} -> {recall[c]:.3f}"
                                      for c in recall))
    print(f"-> {out}")


@app.command("report")
def report_cmd(
    runs: list[str] = typer.Argument(
        ..., help="Run folders (members, ensembles, adjusted) or quoted glob patterns."),
    out: Path = typer.Option(..., help="Output folder, e.g. reports/NAME."),
    ferplus: Path | None = typer.Option(None, help="FER+ fer2013new.csv for the noise taxonomy."),
    data: Path | None = typer.Option(None, envvar="FERENS_DATA",
                                     help="FER2013 data (for thumbnails and duplicates)."),
    split: str = typer.Option("test", help="test | val"),
    sort: str = typer.Option(
        "accuracy", help="Leaderboard order: accuracy | macro_f1 | balanced_accuracy | g_mean "
                         "| nll | brier | ece."),
    top: int = typer.Option(6, help="Runs of the leaderboard shown with plots in detail."),
    group: list[str] | None = typer.Option(
        None, help="Compare runs on this config field even where others differ (repeatable)."),
    show: list[str] | None = typer.Option(
        None, help="Also show runs whose name matches this glob in detail (repeatable)."),
) -> None:
    """Write the report: leaderboard, study groups, error taxonomy (HTML, Markdown, JSON, PNGs)."""
    from ferens.report.build import write_report

    metrics = write_report(runs, out=out, ferplus=ferplus, data=data, split=split, sort=sort,
                           top=top, group=group or (), show=show or ())
    board = metrics["leaderboard"]
    width = max(len(r["name"]) for r in board["rows"])
    print(f"{'#':>3}  {'run':<{width}}  {'kind':<8}  accuracy  macro_F1  bal_acc  vs best")
    for r in board["rows"]:
        test = r["vs_best"]
        verdict = "best" if test is None else (
            f"q={test['q_value']:.2g}{' *' if test['significant'] else ''}"
            if "q_value" in test else "")
        print(f"{r['rank']:>3}  {r['name']:<{width}}  {r['kind']:<8}  {r['accuracy']:8.4f}  "
              f"{r['macro_f1']:8.4f}  {r['balanced_accuracy']:7.4f}  {verdict}")
    print(f"sorted by {board['sort']}; {len(metrics['groups'])} study group(s): "
          + (", ".join(g["title"] for g in metrics["groups"]) or "none"))
    for item in metrics["skipped"]:
        print(f"skipped {item}")
    print(f"report: {out / 'report.html'} (also report.md, metrics.json and the PNGs in {out})")


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="A train-member, ensemble or adjusted run folder."),
    out: Path = typer.Option(..., help="Bundle folder to write, e.g. model.ferens."),
    onnx: bool = typer.Option(False, "--onnx", help="Also write an ONNX model per member."),
    half: bool = typer.Option(False, "--half", help="Store the weights as float16 (half size)."),
) -> None:
    """Pack a member, ensemble or adjusted run into a self-contained bundle (safetensors + JSON)."""
    from ferens.deploy.export import export_bundle
    from ferens.io import read_json

    path = export_bundle(run, out, onnx=onnx, half=half)
    manifest = read_json(path / "manifest.json")
    check = manifest["verified_max_test_probability_difference"]
    how = manifest["method"] or {"adjusted": "logit-adjusted"}.get(manifest["kind"], "member")
    print(f"{manifest['kind']} {manifest['name']} ({how}, "
          f"{len(manifest['members'])} member(s){', ONNX' if onnx else ''}) -> {path}"
          + (f"; reproduces its saved test probabilities within {check:.1e}"
             if check is not None else ""))


@app.command("predict")
def predict_cmd(
    inputs: list[Path] = typer.Argument(..., help="Images, videos and/or folders of them."),
    model: Path | None = typer.Option(
        None, help="A bundle written by `ferens export` [the model shipped with ferens]."),
    out: Path = typer.Option(Path("predictions"), help="Folder for predictions.csv/.json."),
    no_detect: bool = typer.Option(False, "--no-detect",
                                   help="Treat each image as an aligned face crop."),
    annotate: bool = typer.Option(False, "--annotate",
                                  help="Write annotated copies of images to OUT/annotated/."),
    detector: str = typer.Option(
        "auto", help="auto (mtcnn when installed, else haar) | mtcnn (pip install "
        "'ferens[mtcnn]') | haar (OpenCV 4) | lbp (scikit-image)."),
    min_face: int | None = typer.Option(
        None, help="Smallest face box searched for, in pixels [mtcnn 32, haar and lbp 48]."),
    confidence: float | None = typer.Option(
        None, help="mtcnn: smallest face score kept, 0-1 [0.7]."),
    every: int | None = typer.Option(None, help="Videos: predict every N-th frame."),
    fps: float | None = typer.Option(None, help="Videos: frames sampled per second [5]."),
    detect_every: int = typer.Option(
        1, help="Videos: detect faces on every K-th sampled frame, reuse the boxes between."),
    backend: str = typer.Option("torch", help="torch | onnx (needs an --onnx export)."),
    tta: str | None = typer.Option(
        None, help="Views per face: none | flip | shift | tencrop [the model's own]."),
    batch_size: int = typer.Option(256, help="Faces per forward pass."),
    threads: int = typer.Option(0, help="CPU threads (0 = $OMP_NUM_THREADS or all cores)."),
) -> None:
    """Find faces in images and videos; write one row per face (box, class probabilities, top
    class), a summary and a timeline plot per video."""
    from ferens.deploy.predict import check_some_input_read, predict_images
    from ferens.deploy.shipped import load_model
    from ferens.deploy.writers import format_summary, write_predictions
    from ferens.models.inference import configure_threads
    from ferens.outputs import check_replaceable, output_folder

    if every is not None and fps is not None:
        raise FerensError("give --every or --fps, not both")
    configure_threads(threads)
    loaded = load_model(model).bundle.with_tta(tta)
    check_replaceable(out, "predictions")
    with output_folder(out, "predictions") as tmp:
        frame = predict_images(loaded, inputs, detect=not no_detect,
                               annotate_dir=tmp / "annotated" if annotate else None,
                               batch_size=batch_size, backend=backend, detector=detector,
                               min_face=min_face, every=every, fps=fps,
                               detect_every=detect_every, confidence=confidence)
        check_some_input_read(frame)
        write_predictions(frame, tmp, loaded)
    csv_path, json_path = out / "predictions.csv", out / "predictions.json"
    print(format_summary(frame))
    print(f"wrote {csv_path} and {json_path}"
          + (f" and {len(frame.attrs['videos'])} timeline(s) in {out / 'timelines'}"
             if frame.attrs["videos"] else ""))


@app.command("evaluate")
def evaluate_cmd(
    model: Path | None = typer.Option(None, help="A bundle [the model shipped with ferens]."),
    data: str | None = typer.Option(None, envvar="FERENS_DATA",
                                    help="fer2013.csv(.gz) or image folder [../shared/...]."),
    split: str = typer.Option("test", help="train | val | test (PrivateTest = test)."),
    backend: str = typer.Option("torch", help="torch | onnx."),
    tta: str | None = typer.Option(
        None, help="Views per face: none | flip | shift | tencrop [the model's own]."),
    out: Path | None = typer.Option(None, help="Also write the metrics to this JSON file."),
    threads: int = typer.Option(0, help="CPU threads (0 = $OMP_NUM_THREADS or all cores)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Accuracy, macro-F1 and per-class recall of a bundle on labelled FER2013 data."""
    from ferens.deploy.evaluate import evaluate_bundle
    from ferens.deploy.shipped import load_model
    from ferens.io import check_output_file, write_json
    from ferens.models.inference import configure_threads

    if out is not None:
        check_output_file(out)
    configure_threads(threads)
    metrics = evaluate_bundle(load_model(model).bundle.with_tta(tta), data, split, backend,
                              show_progress=not quiet)
    print(f"{metrics['model']} on {metrics['data']} [{split}, {metrics['rows']} rows]: "
          f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
    print("recall: " + ", ".join(f"{c} {r:.3f}" for c, r in metrics["per_class_recall"].items()))
    if out is not None:
        write_json(out, metrics)
        print(f"wrote {out}")


@app.command("study")
def study_cmd(
    study: Path = typer.Argument(..., help="Study file, e.g. experiments/study.toml."),
    lanes: int | None = typer.Option(None, help="Members trained side by side (0 = per core)."),
    no_train: bool = typer.Option(False, "--no-train",
                                  help="Only ensemble and report what has finished."),
    only: list[str] | None = typer.Option(None, help="Train only this member (repeatable)."),
    threads: int | None = typer.Option(
        None, help="Threads per lane [cores // lanes]; per member with --backend ray [its own, "
                   "else 1]."),
    backend: str = typer.Option("local", help="local | ray (members as Ray tasks)."),
    address: str | None = typer.Option(
        None, help="Ray cluster to join (auto = the running one) [a new local Ray]."),
) -> None:
    """Run a whole study: train missing members (resumable), ensemble them, write the report."""
    from ferens.study.pipeline import run_study

    outcome = run_study(study, lanes=lanes, train=not no_train, only=only, threads=threads,
                        backend=backend, address=address)
    if outcome["failed"]:
        raise FerensError(f"members failed: {outcome['failed']}")


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: the path(s) and the system's reason."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    reason = exc.strerror or str(exc)
    hint = {28: " (the disk is full: free space or write elsewhere)",
            30: " (write the output elsewhere)", 13: " (write the output elsewhere)",
            36: " (choose a shorter name)"}.get(exc.errno, "")
    return f"{where}: {reason}{hint}" if where else f"{reason}{hint}"


def main() -> None:
    """Entry point: user errors print one line and exit with code 2, never a traceback."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if len(sys.argv) > 1 and sys.argv[1] in SINGLE_THREAD_COMMANDS:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
    try:
        app(standalone_mode=False)
    except FerensError as exc:  # one line, even when a library's message had several
        print(f"ferens: error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a full disk, a read-only folder, no permission, a name too long
        print(f"ferens: error: {describe_os_error(exc)}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("ferens: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click/typer usage errors
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
