"""What `ferens predict` writes: predictions.csv and predictions.json, the annotated images,
one timeline plot per video, and the summary it prints.

    >>> from ferens.deploy.writers import format_summary, write_predictions
    >>> write_predictions(rows, "out/", bundle)   # rows: ferens.deploy.predict.predict_images
    >>> print(format_summary(rows))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from ferens.deploy.face_crops import Box

if TYPE_CHECKING:
    from ferens.deploy.bundle import Bundle


def annotate(image: np.ndarray, boxes: list[Box], probs: np.ndarray,
             class_names: tuple[str, ...]) -> np.ndarray:
    """A copy of a BGR image with each face's box and ``Top 0.87`` label drawn on it."""
    out = image.copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    scale = max(0.4, max(out.shape[:2]) / 1000)
    for (x, y, w, h), p in zip(boxes, probs, strict=True):
        label = f"{class_names[int(p.argmax())]} {p.max():.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), thick)
        ty = y - 4 if y - th - base - 4 >= 0 else y + h + th + 4
        cv2.rectangle(out, (x, ty - th - 2), (x + tw + 2, ty + base), (0, 255, 0), cv2.FILLED)
        cv2.putText(out, label, (x + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick,
                    cv2.LINE_AA)
    return out


def format_summary(frame: pd.DataFrame) -> str:
    """The skip summary printed by `ferens predict`: counts, then one line per skipped file."""
    s = frame.attrs["summary"]
    reasons = ", ".join(f"{n} {r}" for r, n in s["skipped_by_reason"].items())
    videos = f" and {s['videos_with_faces']} video(s)" if s.get("videos_with_faces") else ""
    lines = [f"{s['faces']} face(s) in {s['images_with_faces']} image(s){videos} from "
             f"{s['inputs']} input file(s); skipped {s['skipped']}"
             + (f" ({reasons})" if reasons else "")]
    lines += [f"  {Path(name).name}: {v['duration_s']:.1f} s, {v['frames_sampled']} frames "
              f"sampled, {v['frames_with_faces']} with a face: mostly {v['dominant']} "
              f"({100 * v['share'][v['dominant']]:.0f}% of {v['faces']} faces)"
              for name, v in frame.attrs.get("videos", {}).items()]
    if s.get("detector_note"):
        lines.append(f"  note: {s['detector_note']}")
    if s.get("not_annotated"):
        lines.append("  --annotate draws on images only; not annotated: "
                     + ", ".join(Path(v).name for v in s["not_annotated"]))
    lines += [f"  skipped {k['file']}: {k['reason']} ({k['detail']})"
              for k in frame.attrs["skipped"]]
    return "\n".join(lines)


def write_predictions(frame: pd.DataFrame, out: str | Path, bundle: Bundle | None = None
                      ) -> tuple[Path, Path]:
    """predictions.csv (rows), predictions.json (rows, skipped, summary) and a timeline per
    video in folder `out`. predictions.json lists every file written there (the annotated
    images of ``frame`` too when they lie in ``out/annotated``): what a later `predict --out`
    may replace."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "predictions.csv", out / "predictions.json"
    frame.to_csv(csv_path, index=False)
    files = [csv_path.name, json_path.name]
    files += [f"annotated/{Path(p).name}" for p in frame.attrs.get("annotated", [])
              if Path(p).parent == out / "annotated"]
    names = set()
    for video in frame.attrs.get("videos", {}):
        stem, n = Path(video).stem, 2
        name = stem
        while name in names:
            name, n = f"{stem}-{n}", n + 1
        names.add(name)
        plot_timeline(frame[frame["file"] == video], out / "timelines" / f"{name}.png", video,
                      frame.attrs["videos"][video].get("duration_s"),
                      bundle.class_names if bundle else None)
        files.append(f"timelines/{name}.png")
    payload = {"bundle": str(bundle.path) if bundle else None,
               "summary": frame.attrs.get("summary", {}),
               "videos": frame.attrs.get("videos", {}),
               "skipped": frame.attrs.get("skipped", []),
               "files": sorted(files),
               "rows": json.loads(frame.to_json(orient="records"))}
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return csv_path, json_path


def plot_timeline(rows: pd.DataFrame, path: Path, title: str,
                  duration_s: float | None = None,
                  class_names: tuple[str, ...] | None = None) -> Path:
    """Probability of each class over time (mean over the faces of each sampled frame), over
    the whole video when its ``duration_s`` is given (frames without a face leave gaps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ferens.classes import CLASS_NAMES

    class_names = tuple(class_names or CLASS_NAMES)
    per_frame = rows.groupby("time_s")[list(class_names)].mean()
    gaps = np.diff(per_frame.index.to_numpy(float))
    if len(gaps):  # no line across a stretch of frames without a face
        breaks = per_frame.index[1:][gaps > 1.5 * np.median(gaps)] - 1e-6
        per_frame = pd.concat([per_frame, pd.DataFrame(np.nan, index=breaks,
                                                       columns=per_frame.columns)]).sort_index()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for name in class_names:
        ax.plot(per_frame.index, per_frame[name], label=name, linewidth=1.4)
    ax.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1), title=Path(title).name)
    if duration_s:
        ax.set_xlim(0, duration_s)
    ax.legend(ncol=min(len(class_names), 8), fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.22))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_face_crops(faces: np.ndarray, folder: str | Path, prefix: str = "face") -> list[Path]:
    """Write uint8 (N,48,48) faces as lossless PNGs (e.g. the FER2013 test crops)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}-{i:05d}.png" for i in range(len(faces))]
    for path, face in zip(paths, faces, strict=True):
        cv2.imwrite(str(path), face)
    return paths
