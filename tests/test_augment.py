"""Augmentation on Omniglot (train.py's augment): a random affine warp per training image, drawn per step and run
(step.StepTerms.draws), so a group member warps what its solo run warps; never at eval."""
import math

import pytest
import torch

from conftest import scaled_error
from test_group import stacked_image_models
from model import augment_thetas, augmented
from training import check_config, parse_train_args


def test_the_warps_are_bounded_by_the_strength_and_none_at_zero():
    g = torch.Generator().manual_seed(0)
    identity = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    assert torch.equal(augment_thetas((4, 9), 0.0, g), identity.expand(4, 9, 2, 3))
    theta = augment_thetas((2000,), 1.0, g)
    linear = theta[:, :, :2]
    det = torch.linalg.det(linear)          # 1 / scale^2: rotation and shear keep areas
    assert det.min() > 1 / 1.15 ** 2 - 1e-5 and det.max() < 1 / 0.85 ** 2 + 1e-5
    assert theta[:, :, 2].abs().max() <= 0.1
    angle = torch.atan2(linear[:, 1, 0], linear[:, 0, 0])
    assert angle.abs().max() <= math.radians(30) + 1e-6 and angle.abs().max() > math.radians(25)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(augment_thetas((3, 9), 0.5, g1), augment_thetas((3, 9), 0.5, g2))


def test_the_identity_warp_returns_the_images():
    """Bilinear sampling at the pixel centres: each output is one input pixel times a weight 1 up to the rounding of
    the grid coordinates (a few float32 roundings of a coordinate, times the 255 range of a pixel difference)."""
    images = torch.randint(0, 256, (2, 9, 14, 14), dtype=torch.uint8)
    same = augmented(images, augment_thetas((2, 9), 0.0, torch.Generator()))
    assert scaled_error(same, images.float(), scale=255.0) <= 4 * 14
    warped = augmented(images, augment_thetas((2, 9), 1.0, torch.Generator().manual_seed(1)))
    assert (warped - images.float()).abs().mean() > 10  # a real warp moves pixels


def test_each_member_warps_as_its_solo_model_under_the_group_vmap():
    """The stacked model passes each member its own draws: member k's logits with its warps equal its solo model's
    (the error model of tests/test_group.py's image test), and a warp changes them."""
    models, stacked, items, labels = stacked_image_models()
    g = torch.Generator().manual_seed(3)
    thetas = torch.stack([augment_thetas((3, 9), 0.0, g), augment_thetas((3, 9), 1.0, g)])
    logits = stacked(items, labels, draws={'augment': thetas})['logits']
    for k, model in enumerate(models):
        solo = model(items[k], labels[k], draws={'augment': thetas[k]})['logits']
        assert scaled_error(logits[k], solo) <= 16 * 64
    plain = models[1](items[1], labels[1])['logits']
    assert scaled_error(logits[1], plain) > 1e3  # the warped member differs from its unwarped self


def test_augment_is_an_omniglot_key():
    config = parse_train_args([])
    with pytest.raises(ValueError, match="augment=0.5 must be >= 0, and 0 unless dataset='omniglot'"):
        check_config({**config, 'augment': 0.5})
    with pytest.raises(ValueError, match='augment=-1'):
        check_config({**config, 'augment': -1.0, 'dataset': 'omniglot'})
