import albumentations as A
import numpy as np
import pytest

from ferens.data.augment import apply, eval_pipeline, train_pipeline
from ferens.errors import FerensError

IMAGES = np.random.default_rng(0).integers(0, 256, (4, 48, 48), dtype=np.uint8)


@pytest.mark.parametrize("name", ["none", "light", "strong"])
def test_named_pipelines_keep_48x48_uint8_faces(name):
    out = apply(train_pipeline(name, seed=1), IMAGES)
    assert out.shape == IMAGES.shape and out.dtype == np.uint8


def test_same_seed_gives_the_same_augmentation():
    a = apply(train_pipeline("strong", seed=3), IMAGES)
    b = apply(train_pipeline("strong", seed=3), IMAGES)
    assert np.array_equal(a, b)


def test_config_override_replaces_the_named_pipeline():
    override = A.to_dict(A.Compose([A.HorizontalFlip(p=1.0)]))
    out = apply(train_pipeline("none", override=override), IMAGES)
    assert np.array_equal(out, IMAGES[:, :, ::-1])
    with pytest.raises(FerensError, match="augment_override is not an albumentations pipeline"):
        bogus = {"transform": {"__class_fullname__": "NoSuchThing", "p": 1.0}}
        train_pipeline("none", override=bogus)


def test_crops_train_randomly_and_evaluate_centred():
    assert apply(train_pipeline("none", crop_size=40, seed=0), IMAGES).shape == (4, 40, 40)
    centred = apply(eval_pipeline(crop_size=40), IMAGES)
    assert np.array_equal(centred, IMAGES[:, 4:44, 4:44])


FACES = np.random.default_rng(1).integers(0, 256, (32, 48, 48), dtype=np.uint8)


def _changed(out: np.ndarray, images: np.ndarray) -> np.ndarray:
    return np.array([not np.array_equal(a, b) for a, b in zip(out, images, strict=True)])


@pytest.mark.parametrize("name, at_least", [("light", 0.6), ("strong", 0.8)])
def test_named_pipelines_change_most_faces_and_none_changes_none(name, at_least):
    assert _changed(apply(train_pipeline(name, seed=2), FACES), FACES).mean() >= at_least
    assert not _changed(apply(train_pipeline("none", seed=2), FACES), FACES).any()


def test_light_augmentation_mirrors_some_faces_and_moves_others():
    out = apply(train_pipeline("light", seed=4), FACES)
    mirrored = [np.array_equal(o, f[:, ::-1]) for o, f in zip(out, FACES, strict=True)]
    assert any(mirrored)  # the flip alone
    assert _changed(out, FACES).sum() > sum(mirrored)  # and geometric changes


def test_strong_augmentation_differs_between_seeds():
    a = apply(train_pipeline("strong", seed=1), FACES)
    b = apply(train_pipeline("strong", seed=2), FACES)
    assert _changed(a, b).mean() > 0.5


def test_training_batches_are_augmented_per_image_and_per_epoch():
    from ferens.config import TrainConfig
    from ferens.data.loader import AugmentedBatches

    batches = AugmentedBatches(FACES, TrainConfig(augment="strong"))
    one, idx = batches[(1, np.arange(len(FACES)))]
    two, _ = batches[(2, np.arange(len(FACES)))]
    assert np.array_equal(idx.numpy(), np.arange(len(FACES)))
    assert _changed(one.numpy(), FACES).mean() > 0.8
    assert _changed(one.numpy(), two.numpy()).mean() > 0.8


def test_augment_refuses_to_import_when_the_config_declares_a_pipeline_it_lacks():
    import subprocess
    import sys

    code = ("import ferens.config as c; c.AUGMENTATIONS = (*c.AUGMENTATIONS, 'wild'); "
            "import ferens.data.augment")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode != 0
    assert ("ferens.config declares ['light', 'none', 'strong', 'torch-light', 'torch-strong', "
            "'wild']") in done.stderr
