"""The `ferens` command line: a thin typer layer over the library API."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ferens.errors import FerensError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Facial-expression recognition on FER2013.")


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
    from ferens.ensemble import build_ensemble

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


@app.command("report")
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Member or ensemble run folders."),
    out: Path = typer.Option(..., help="Output folder, e.g. reports/NAME."),
    ferplus: Path | None = typer.Option(None, help="FER+ fer2013new.csv for the noise taxonomy."),
    data: Path | None = typer.Option(None, envvar="FERENS_DATA",
                                     help="FER2013 data (for thumbnails and duplicates)."),
    split: str = typer.Option("test", help="test | val"),
) -> None:
    """Write the per-class error-taxonomy report (HTML, Markdown, JSON, PNGs)."""
    from ferens.report import write_report

    write_report(runs, out=out, ferplus=ferplus, data=data, split=split)


def main() -> None:
    """Entry point: user errors print one line and exit with code 2, never a traceback."""
    try:
        app(standalone_mode=False)
    except FerensError as exc:
        print(f"ferens: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("ferens: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
