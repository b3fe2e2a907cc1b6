"""Anatomy decomposer, Adam's two views, and the downstream augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from adam_ext.data import views
from adam_ext.data.seg_augment import SegmentationAugment
from adam_ext.data.views import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AnatomyDecomposer,
    ClassificationTransform,
    TwoViews,
    ViewConfig,
    grid_boxes,
)

SHAPES = [
    (100, 100, 2),
    (101, 103, 4),
    (7, 5, 3),
    (1024, 1000, 4),
    (37, 64, 5),
    (10, 10, 10),
    (33, 17, 1),
    (20, 9, 0),
]


def gradient(height=256, width=256, channels=1) -> torch.Tensor:
    """uint8 image whose intensity grows from left (0) to right (255)."""
    row = torch.linspace(0, 255, width).round().to(torch.uint8)
    return row.expand(channels, height, width).clone()


def random_image(shape, seed) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def x_moment(view: torch.Tensor) -> float:
    """Σ (x - centre)·value over channel 0: positive when intensity grows to the right."""
    x = torch.arange(view.shape[-1], dtype=torch.float64) - (view.shape[-1] - 1) / 2
    return float((view[0].double() * x).sum())


# ----------------------------------------------------------------------------- decomposer


@pytest.mark.parametrize("height,width,n", SHAPES)
def test_cells_tile_the_image_exactly(height, width, n):
    boxes = grid_boxes(height, width, n)
    assert len(boxes) == max(n, 1) ** 2
    cover = np.zeros((height, width), dtype=int)
    for top, left, h, w in boxes:
        assert h > 0 and w > 0
        cover[top : top + h, left : left + w] += 1
    assert (cover == 1).all()
    heights = {h for _, _, h, _ in boxes}
    widths = {w for _, _, _, w in boxes}
    assert max(heights) - min(heights) <= 1 and max(widths) - min(widths) <= 1


@pytest.mark.parametrize("height,width,n", SHAPES)
def test_decomposer_returns_the_drawn_cell(height, width, n, seed):
    image = torch.arange(height * width * 3, dtype=torch.int32).reshape(3, height, width)
    decomposer = AnatomyDecomposer(n, seed=seed)
    boxes = grid_boxes(height, width, n)
    for _ in range(20):
        crop, index, box = decomposer.sample(image)
        assert box == boxes[index]
        top, left, h, w = box
        assert torch.equal(crop, image[:, top : top + h, left : left + w])
        assert crop.data_ptr() == image[:, top:, left:].data_ptr()  # a view, no copy


@pytest.mark.parametrize("n", [2, 4])
def test_chosen_cell_is_uniform(n, seed):
    decomposer = AnatomyDecomposer(n, seed=seed)
    image = torch.zeros(1, 64, 64, dtype=torch.uint8)
    draws = 400 * n * n
    counts = np.bincount([decomposer.sample(image)[1] for _ in range(draws)], minlength=n * n)
    assert counts.shape == (n * n,)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_decomposer_is_reproducible(seed):
    image = torch.zeros(1, 64, 64, dtype=torch.uint8)
    a, b = AnatomyDecomposer(4, seed=seed), AnatomyDecomposer(4, seed=seed)
    first = [a.sample(image)[1] for _ in range(50)]
    assert first == [b.sample(image)[1] for _ in range(50)]
    generator = torch.Generator().manual_seed(seed)
    c = AnatomyDecomposer(4, seed=generator)
    assert [c.sample(image)[1] for _ in range(50)] == first
    assert [AnatomyDecomposer(4, seed=seed + 1).sample(image)[1] for _ in range(50)] != first


@pytest.mark.parametrize("n", [-1, 1.5, True])
def test_decomposer_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        AnatomyDecomposer(n)


def test_decomposer_rejects_grid_finer_than_the_image():
    with pytest.raises(ValueError, match="n must be at most"):
        AnatomyDecomposer(8).sample(torch.zeros(1, 4, 100))


# ----------------------------------------------------------------------------- two views


@pytest.mark.parametrize(
    "channels,height,width,n", [(1, 300, 280, 0), (1, 517, 611, 2), (3, 256, 256, 0), (3, 400, 300, 4)]
)
def test_two_views_shapes_and_dtypes(channels, height, width, n, seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (channels, height, width), dtype=torch.uint8, generator=g)
    q, k = TwoViews(224, n=n, seed=seed)(image)
    for view in (q, k):
        assert view.shape == (3, 224, 224) and view.dtype == torch.float32 and view.is_contiguous()
        assert torch.isfinite(view).all()
    assert not torch.equal(q, k)


def test_views_are_normalised_with_imagenet_statistics():
    value = 173
    image = torch.full((1, 200, 300), value, dtype=torch.uint8)
    q, _ = TwoViews(64, jitter_p=0.0, blur_p=0.0, degrees=0.0, seed=0)(image)
    expected = torch.tensor([(value / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(q, expected.view(3, 1, 1).expand(3, 64, 64), atol=1e-5, rtol=0)


def test_grey_stays_single_channel_until_the_end(seed):
    seen = []
    transform = TwoViews(96, n=2, seed=seed)
    normalize = transform.normalize

    def spy(image):
        seen.append((tuple(image.shape), image.dtype))
        return normalize(image)

    transform.normalize = spy
    image = random_image((1, 320, 256), seed)
    for _ in range(10):
        q, k = transform(image)
        for view in (q, k):
            # equal channels up to the normalisation: (v - mean_c) / std_c with one v
            v = view * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
            torch.testing.assert_close(v[0], v[1], atol=1e-5, rtol=0)
            torch.testing.assert_close(v[0], v[2], atol=1e-5, rtol=0)
    assert seen and all(entry == ((1, 96, 96), torch.uint8) for entry in seen)


def test_views_are_reproducible_with_a_seed(seed):
    image = random_image((1, 256, 256), seed)
    a, b, c = TwoViews(64, n=2, seed=seed), TwoViews(64, n=2, seed=seed), TwoViews(64, n=2, seed=seed + 1)
    for _ in range(3):
        qa, ka = a(image)
        qb, kb = b(image)
        qc, _ = c(image)
        assert torch.equal(qa, qb) and torch.equal(ka, kb)
        assert not torch.equal(qa, qc)


def test_no_view_is_ever_flipped(seed):
    """A left-to-right gradient keeps growing to the right in every view (rotation ≤ 30°, no flip)."""
    transform = TwoViews(64, seed=seed)
    image = gradient()
    moments = [x_moment(view) for _ in range(150) for view in transform(image)]
    assert min(moments) > 0
    assert "flip" not in repr(transform).lower()


def test_classification_transform_flips_half_the_time(seed):
    torch.manual_seed(seed)
    train = ClassificationTransform(train=True, size=64)
    image = gradient()
    moments = [x_moment(train(image)) for _ in range(200)]
    flipped = sum(m < 0 for m in moments)
    assert stats.binomtest(flipped, 200, 0.5).pvalue > 1e-3
    test = ClassificationTransform(train=False, size=64)
    out = test(image)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert torch.equal(out, test(image))


@pytest.mark.parametrize("channels", [1, 3])
def test_blur_matches_torchvision(channels, seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (channels, 60, 70), dtype=torch.uint8, generator=g)
    for sigma in (0.1, 0.7, 2.0):
        ours = views.gaussian_blur(image, 23, sigma)
        theirs = TF.gaussian_blur(image, [23, 23], [sigma, sigma])
        assert ours.shape == theirs.shape and ours.dtype == torch.uint8
        diff = (ours.int() - theirs.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


@pytest.mark.parametrize("channels", [1, 3])
def test_kernels_accept_strided_views(channels, seed):
    image = random_image((channels, 300, 300), seed)[:, 10:234, 20:244]
    assert not image.is_contiguous()
    assert torch.equal(views.rotate(image, 12.0), views.rotate(image.contiguous(), 12.0))
    assert torch.equal(views.gaussian_blur(image, 23, 1.3), views.gaussian_blur(image.contiguous(), 23, 1.3))


@pytest.mark.parametrize("channels,height,width", [(1, 224, 224), (3, 64, 90), (1, 51, 37)])
def test_rotation_matches_torchvision(channels, height, width, seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (channels, height, width), dtype=torch.uint8, generator=g)
    for angle in (-30.0, -7.3, 0.0, 12.5, 29.9):
        ours = views.rotate(image, angle)
        theirs = TF.rotate(image, angle, TF.InterpolationMode.NEAREST)
        assert ours.shape == theirs.shape and ours.dtype == torch.uint8
        # they differ only at exact half-way samples (round-half-even vs half-up), e.g. sin 30° = 1/2
        assert (ours != theirs).float().mean() < 0.01


def test_resized_crop_box_follows_torchvision(seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(200):
        height = int(torch.randint(100, 500, (), generator=g))
        width = int(height * (0.8 + 0.45 * torch.rand((), generator=g)))
        u = torch.rand(22, generator=g).tolist()
        top, left, h, w = views.resized_crop_box(height, width, u, (0.2, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
        assert 0.2 * height * width * 0.95 <= h * w <= height * width
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
    # no attempt fits a 325×22 strip: torchvision's fallback, the central crop of clamped aspect
    box = views.resized_crop_box(325, 22, [0.99] * 22, (0.2, 1.0), (3 / 4, 4 / 3))
    assert box == ((325 - 29) // 2, 0, 29, 22)


@pytest.mark.parametrize(
    "field,value", [("scale", (0.5, 0.2)), ("jitter_p", 1.5), ("blur_kernel", 4), ("size", 0)]
)
def test_view_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        ViewConfig(**{field: value})


def test_two_views_reject_non_uint8_images():
    message = r"image must be a uint8 tensor of shape \(1, H, W\) or \(3, H, W\), got torch.float32"
    with pytest.raises(ValueError, match=message):
        TwoViews(32)(torch.zeros(1, 64, 64))


class _ConstantImages(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform
        self.image = gradient(64, 64)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return self.transform(self.image)[0]


def test_dataloader_workers_draw_different_views(seed):
    """A seeded pipeline copied into two workers must not repeat itself across them."""
    loader = torch.utils.data.DataLoader(
        _ConstantImages(TwoViews(32, n=2, seed=seed)),
        batch_size=1,
        num_workers=2,
        multiprocessing_context="fork",
        generator=torch.Generator().manual_seed(seed),
    )
    batches = [batch[0] for batch in loader]  # workers alternate: items 0, 2 from one, 1, 3 from the other
    assert not torch.equal(batches[0], batches[1])
    assert not torch.equal(batches[2], batches[3])


# ----------------------------------------------------------------------------- segmentation


def disk_image(rng: np.random.Generator, side=128) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    cy, cx = rng.uniform(0.35, 0.65, 2) * side
    r = rng.uniform(0.15, 0.3) * side
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    image = np.where(inside, 200, 60) + rng.normal(0, 5, (side, side))
    return np.clip(image, 0, 255).astype(np.uint8)


def test_segmentation_augment_keeps_image_and_mask_aligned(seed):
    rng = np.random.default_rng(seed)
    always = dict(gamma_p=1.0, elastic_p=1.0, brightness_contrast_p=1.0, optical_p=1.0, grid_p=1.0)
    augment = SegmentationAugment(seed=seed, **always)
    moved = 0
    for _ in range(10):
        image = disk_image(rng)
        mask = (image > 128).astype(np.uint8)
        out_image, out_mask = augment(image, mask)
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {0, 1}
        threshold = (out_image[out_mask == 1].mean() + out_image[out_mask == 0].mean()) / 2
        segmented = out_image > threshold
        iou = (segmented & (out_mask == 1)).sum() / (segmented | (out_mask == 1)).sum()
        assert iou > 0.9
        moved += not np.array_equal(out_mask, mask)
    assert moved >= 8  # the geometric transforms really moved the masks


def test_segmentation_augment_keeps_labels_and_dtypes(seed):
    rng = np.random.default_rng(seed)
    image = np.repeat(disk_image(rng)[..., None], 3, axis=2)
    labels = np.zeros(image.shape[:2], dtype=np.int64)
    labels[20:60, 20:60], labels[70:110, 30:90] = 1, 2
    augment = SegmentationAugment(seed=seed, elastic_p=1.0, grid_p=1.0, optical_p=1.0)
    out_image, out_labels = augment(image, labels)
    assert out_image.shape == image.shape and out_labels.dtype == np.int64
    assert set(np.unique(out_labels)) <= {0, 1, 2}
    _, out_bool = augment(image[..., 0], labels == 1)
    assert out_bool.dtype == bool


def test_segmentation_augment_is_reproducible(seed):
    image = disk_image(np.random.default_rng(seed))
    mask = (image > 128).astype(np.uint8)
    a, b = SegmentationAugment(seed=seed), SegmentationAugment(seed=seed)
    for _ in range(3):
        (ia, ma), (ib, mb) = a(image, mask), b(image, mask)
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)


def test_segmentation_augment_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="mask must be an array"):
        SegmentationAugment()(np.zeros((32, 32), np.uint8), np.zeros((16, 32), np.uint8))


# ---------------------------------------------------------------------------------------- extension points


def fixed_table_view(views_, anchor, u):
    """The view as 0.1.0 computed it, from its fixed table of 34 uniforms (crop 0-21, jitter 22-30, blur
    31-32, angle 33): the yardstick of the default list of steps."""
    cfg = views_.config
    top, left, h, w = views.resized_crop_box(*anchor.shape[-2:], u[0:22], cfg.scale, cfg.ratio)
    x = TF.resized_crop(anchor, top, left, h, w, [cfg.size] * 2, InterpolationMode.BILINEAR)
    if u[22] < cfg.jitter_p:
        factors, order = u[23:27], u[27:31]
        for op in sorted(range(4), key=lambda i: order[i]):
            lo = {0: cfg.brightness, 1: cfg.contrast}.get(op)
            if lo is not None and lo > 0:
                f = max(0.0, 1.0 - lo) + (1.0 + lo - max(0.0, 1.0 - lo)) * factors[op]
                x = (TF.adjust_brightness if op == 0 else TF.adjust_contrast)(x, f)
    if u[31] < cfg.blur_p:
        x = views.gaussian_blur(
            x, cfg.blur_kernel, cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * u[32]
        )
    x = views.rotate(x, cfg.degrees * (2 * u[33] - 1))
    return views_.normalize(x)


@pytest.mark.parametrize("n", [0, 2])
def test_the_default_steps_draw_and_compute_as_the_fixed_table_did(seed, n):
    two = TwoViews(48, n)
    assert two.draws_per_view == 34 and [type(s).__name__ for s in two.steps] == [
        "ResizedCrop",
        "ColorJitter",
        "GaussianBlur",
        "Rotation",
    ]
    image = torch.randint(
        0, 256, (1, 96, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    for k in range(6):
        g = torch.Generator().manual_seed(seed * 10 + k)
        q, key = two(image, generator=g)
        g = torch.Generator().manual_seed(seed * 10 + k)
        anchor = two.decomposer.sample(image, g)[0]
        u = torch.rand(2, 34, generator=g).tolist()
        assert torch.equal(q, fixed_table_view(two, anchor, u[0])) and torch.equal(
            key, fixed_table_view(two, anchor, u[1])
        )


class Invert(views.Augmentation):
    """A user's own step, defined outside the package: inverts the image with probability p."""

    draws = 1

    def __init__(self, p):
        self.p = p

    def __call__(self, image, u):
        return 255 - image if u[0] < self.p else image


def test_a_users_augmentation_is_added_from_outside_the_package(seed, monkeypatch):
    monkeypatch.setattr(views, "AUGMENTATIONS", dict(views.AUGMENTATIONS))  # this test's registrations only
    views.register_augmentation("invert", lambda cfg: Invert(1.0))
    default = TwoViews(32, 0)
    names = (*default.config.augmentations, "invert")
    extended = TwoViews(32, 0, augmentations=names)  # by name, as a configuration gives them
    assert torch.equal(
        TwoViews(32, 0, augmentations=[*default.steps, Invert(1.0)])(
            torch.zeros(1, 40, 40, dtype=torch.uint8), generator=torch.Generator().manual_seed(0)
        )[0],
        extended(torch.zeros(1, 40, 40, dtype=torch.uint8), generator=torch.Generator().manual_seed(0))[0],
    )
    assert extended.draws_per_view == default.draws_per_view + 1
    image = torch.randint(
        0, 256, (1, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    a = default(image, generator=torch.Generator().manual_seed(seed))
    b = extended(image, generator=torch.Generator().manual_seed(seed))
    assert not torch.equal(a[0], b[0])  # the step changes the views
    # appended last, it leaves the earlier steps' draws alone: inverting back gives the default view
    mean = torch.tensor(views.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(views.IMAGENET_STD).view(3, 1, 1)
    back = ((1 - (b[0] * std + mean)) - mean) / std
    torch.testing.assert_close(back, a[0], atol=1e-5, rtol=0)
    # and a configuration names it like any other step
    from adam_ext.pretrain.config import load_config

    cfg = load_config(None, ["data.views={augmentations: [resized_crop, rotation, invert]}"], preset="demo")
    assert [type(s).__name__ for s in TwoViews(32, 0, **cfg.data.view_options()).steps] == [
        "ResizedCrop",
        "Rotation",
        "Invert",
    ]


def test_augmentation_names_and_objects_are_checked():
    with pytest.raises(
        ValueError, match=r"augmentations must name steps among .*got \['rotation', 'sharpen'\]"
    ):
        ViewConfig(augmentations=("rotation", "sharpen"))
    with pytest.raises(
        ValueError, match="augmentations must be a non-empty list of step names or Augmentation"
    ):
        TwoViews(32, 0, augmentations=[lambda image, u: image])
    with pytest.raises(ValueError, match="name must be a new augmentation name"):
        views.register_augmentation("rotation", lambda cfg: views.Rotation(5))
    with pytest.raises(ValueError, match=r"data.views must hold valid ViewConfig fields"):
        from adam_ext.pretrain.config import load_config

        load_config(None, ["data.views={augmentations: [blurr]}"])


def test_drop_remainder_cells_are_the_official_codes():
    """grid remainder drop: n cells of side // n each, the last side % n rows and columns in no cell."""
    from adam_ext.data.decomposer import grid_bounds

    assert grid_bounds(10, 3, "drop") == [0, 3, 6, 9] and grid_bounds(10, 3) == [0, 3, 7, 10]
    boxes = grid_boxes(11, 10, 3, "drop")
    assert {(h, w) for _, _, h, w in boxes} == {(3, 3)} and max(t + h for t, _, h, _ in boxes) == 9
    image = torch.arange(11 * 10, dtype=torch.uint8).view(1, 11, 10)
    crop, index, box = AnatomyDecomposer(3, remainder="drop").sample(image, torch.Generator().manual_seed(1))
    assert crop.shape == (1, 3, 3) and box == boxes[index]
    assert TwoViews(8, 3, grid_remainder="drop").decomposer.remainder == "drop"
    with pytest.raises(ValueError, match="remainder must be one of"):
        AnatomyDecomposer(2, remainder="round")
