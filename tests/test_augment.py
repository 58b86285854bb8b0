import albumentations as A
import numpy as np
import pytest

from ferens.augment import apply, eval_pipeline, train_pipeline
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
