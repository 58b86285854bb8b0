"""experiments/gpu: the carry parts round-trip a FER2013 CSV byte for byte, and refuse to grow
past what one device call may send."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fer_rows, write_fer_csv

GPU_DIR = Path(__file__).resolve().parents[1] / "experiments" / "gpu"
sys.path.insert(0, str(GPU_DIR))
import kit  # noqa: E402
import pack  # noqa: E402


@pytest.fixture
def repo(tmp_path) -> Path:
    """A scratch git repo that ignores .gpu-carry, with 10 kB of tree."""
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("/.gpu-carry/\n")
    (root / "tracked.bin").write_bytes(b"x" * 10_000)
    return root


@pytest.fixture
def sources(tmp_path) -> tuple[Path, Path, Path]:
    rows = fer_rows({"Training": 5, "PublicTest": 2, "PrivateTest": 2}, seed=3)
    rows[0] = (rows[0][0], " ".join(["0"] * 2304), rows[0][2])  # flat images code too
    rows[1] = (rows[1][0], " ".join(["255"] * 2304), rows[1][2])
    csv = write_fer_csv(tmp_path / "fer2013.csv", rows)
    ferplus = tmp_path / "fer2013new.csv"
    ferplus.write_text("Usage,Image name,neutral\n" + "Training,fer0.png,10\n" * 50)
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    wheel.write_bytes(b"PK not really a wheel")
    return csv, ferplus, wheel


def test_parts_round_trip_the_csv_byte_for_byte(repo, sources, tmp_path):
    csv, ferplus, wheel = sources
    out = repo / ".gpu-carry"
    sizes = pack.pack(csv, out, parts=2, ferplus=ferplus, wheels=[wheel], repo=repo)
    assert sizes["tree"] == 10_000 + len("/.gpu-carry/\n")  # the carry itself is ignored
    assert (out / "part1" / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    dest = tmp_path / "device"
    with pytest.raises(kit.KitError, match="part 2 of 2 is not unpacked"):
        kit.unpack(out / "part1", dest)
        kit.rebuild(dest, dest / "fer2013.csv")
    kit.unpack(out / "part2", dest)
    report = kit.rebuild(dest, dest / "fer2013.csv")  # checks the hashes, via ferens too
    assert report["ferens_verified"] and report["rows"] == 63
    assert (dest / "fer2013.csv").read_bytes() == csv.read_bytes()
    assert (dest / "fer2013new.csv").read_bytes() == ferplus.read_bytes()


def test_a_damaged_part_or_an_oversize_call_is_refused(repo, sources, tmp_path, capsys):
    csv, _, _ = sources
    out = repo / ".gpu-carry"
    pack.pack(csv, out, parts=2, repo=repo)
    chunk = out / "part2" / "images-2.npz"
    data = bytearray(chunk.read_bytes())
    data[-100] ^= 1
    chunk.write_bytes(bytes(data))
    with pytest.raises(kit.KitError, match="sha256 differs"):
        kit.unpack(out / "part2", tmp_path / "device")
    with pytest.raises(SystemExit) as exc:
        pack.pack(csv, out, parts=2, repo=repo, limit=12_000)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "a device call may send; try --parts 3" in err and err.count("\n") == 1


def test_a_carry_folder_that_git_would_send_is_refused(repo, sources, capsys):
    (repo / ".gitignore").write_text("")
    with pytest.raises(SystemExit):
        pack.pack(sources[0], repo / ".gpu-carry", parts=2, repo=repo)
    assert "is not git-ignored" in capsys.readouterr().err


def test_the_codec_is_lossless_on_extreme_images():
    rng = np.random.default_rng(0)
    images = np.stack([rng.integers(0, 256, (48, 48)), np.zeros((48, 48)),
                       np.full((48, 48), 255), np.tile([0, 255], (48, 24)),
                       rng.integers(120, 130, (48, 48))]).astype(np.uint8)
    assert np.array_equal(kit.decode_images(kit.encode_images(images)), images)


def test_a_trial_study_overrides_every_member_in_its_own_folders(tmp_path):
    import tomllib

    source = Path(__file__).resolve().parents[1] / "experiments" / "study_gpu.toml"
    out = kit.derive_study(source, tmp_path / "trial.toml",
                           kit.parse_set(["device=cpu", "epochs=1", "lr=0.5", "tta=flip"]),
                           results_dir="results/study_gpu-trial", out_dir="runs-trial")
    spec, original = tomllib.loads(out.read_text()), tomllib.loads(source.read_text())
    assert spec["study"] == original["study"] | {"results_dir": "results/study_gpu-trial"}
    assert spec["defaults"] == original["defaults"] | {
        "device": "cpu", "epochs": 1, "lr": 0.5, "tta": "flip", "out_dir": "runs-trial"}
    assert [m["name"] for m in spec["members"]] == [m["name"] for m in original["members"]]
    assert all(m["epochs"] == 1 and m["device"] == "cpu" for m in spec["members"])
