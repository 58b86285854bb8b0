"""Write the model that ships inside ferens (ferens/deploy/weights/default.ferens) from a finished
run.

    .venv/bin/python experiments/make_default_model.py runs/e45-s1 \
        --study experiments/study_v2.toml --member e45-s1

Exports the run as an fp16 bundle, scores the bundle itself on PublicTest and PrivateTest with
`ferens.deploy.evaluate` (the numbers users can reproduce with `ferens evaluate --split test`),
records its provenance in the manifest, and replaces the shipped folder only when everything
succeeded. The member is chosen on PublicTest (val) accuracy only.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from ferens.deploy.bundle import load_bundle
from ferens.deploy.evaluate import evaluate_bundle
from ferens.deploy.export import export_bundle
from ferens.deploy.shipped import SHIPPED_BUNDLE
from ferens.io import read_json, write_json
from ferens.outputs import swap_into_place

MAX_BYTES = 8 * 1024 * 1024


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path, help="finished member run folder (best.safetensors)")
    parser.add_argument("--study", required=True, help="study file that declares the member")
    parser.add_argument("--member", required=True, help="member name in the study file")
    parser.add_argument("--data", default=None, help="FER2013 data [../shared/...]")
    parser.add_argument("--trained-commit", default=None,
                        help="commit of the ferens code that trained the run [HEAD]")
    parser.add_argument("--out", type=Path, default=SHIPPED_BUNDLE)
    ns = parser.parse_args()
    summary = read_json(ns.run / "summary.json")
    with tempfile.TemporaryDirectory(dir=ns.out.parent) as tmp:
        staged = export_bundle(ns.run, Path(tmp) / "default.ferens", half=True)
        bundle = load_bundle(staged)
        scores = {split: evaluate_bundle(bundle, ns.data, split) for split in ("val", "test")}
        manifest_path = staged / "manifest.json"
        manifest = read_json(manifest_path)
        manifest["source"] = f"{ns.study} member {ns.member}"
        for entry in manifest["members"]:  # not this machine's paths
            entry["source"] = manifest["source"]
        manifest["provenance"] = {
            "member": ns.member, "study": ns.study,
            "source_commit": ns.trained_commit or git_commit(), "packed_at_commit": git_commit(),
            "config": read_json(ns.run / "config.json"),
            "train_command": f"ferens study {ns.study} --only {ns.member}",
            "make_command": (f"python experiments/make_default_model.py runs/{ns.member} "
                             f"--study {ns.study} --member {ns.member}"
                             + (f" --trained-commit {ns.trained_commit}"
                                if ns.trained_commit else "")),
            "evaluate_command": "ferens evaluate --split test",
            "val_accuracy": scores["val"]["accuracy"],
            "test_accuracy": scores["test"]["accuracy"],
            "test_macro_f1": scores["test"]["macro_f1"],
            "test_per_class_recall": scores["test"]["per_class_recall"],
            "fp32_val_accuracy": summary["val"]["accuracy"],
            "fp32_test_accuracy": summary["test"]["accuracy"],
            "weights": "float16 safetensors",
            "selected_on": "PublicTest (val) accuracy",
        }
        write_json(manifest_path, manifest)
        size = sum(p.stat().st_size for p in staged.rglob("*") if p.is_file())
        if size > MAX_BYTES:
            raise SystemExit(f"bundle is {size / 2**20:.1f} MiB, over the 8 MiB limit")
        load_bundle(staged)  # checksums still verify after the manifest edit
        swap_into_place(staged, ns.out)
    print(f"{ns.out}: {size / 2**20:.2f} MiB, val {scores['val']['accuracy']:.4f}, "
          f"test {scores['test']['accuracy']:.4f} (fp32 run: val "
          f"{summary['val']['accuracy']:.4f}, test {summary['test']['accuracy']:.4f})")


if __name__ == "__main__":
    main()
