"""The augmentation ops registry: parsing, streams, every built-in op, a user's op, the errors.

Small tf ops on 32x32 pairs; the one training run (a user's op by path, every built-in name,
from the command line) is marked slow.
"""

import os

import ml_collections
import numpy as np
import pytest
from helpers import SMALL_MODEL_FLAGS, run_train_py, tiny_config

from bts_jax.config_tools import load_config_file
from bts_jax.data import (
    apply_ops,
    check_augmentations,
    make_dataset,
    op_names,
    parse_ops,
    register_op,
)
from bts_jax.data import augment_ops as ops_lib
from bts_jax.data._tf import tf
from bts_jax.data.augment_zoo import affine_transform
from bts_jax.experiments import sweeps
from bts_jax.train.config_checks import validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILTIN = ("affine", "brightness_contrast", "flip", "flip_lr", "flip_ud", "gamma", "noise", "rot90")
GEOMETRIC = ("flip", "flip_lr", "flip_ud", "rot90", "affine(rotate=30,scale=0.3,translate=0.2)")
INTENSITY = ("brightness_contrast(0.3,0.3)", "gamma(0.5,2.0)", "noise(0.1)")
ONE_HOST = {"process_index": 0, "process_count": 1}


def _pair(size=32):
    """An image with a distinct value per pixel, and a mask with an off-centre tumour."""
    image = (np.arange(size * size, dtype=np.float32) / (size * size)).reshape(size, size, 1)
    mask = np.zeros((size, size, 1), np.uint8)
    mask[3:12, 5:20] = 1
    mask[20:27, 2:6] = 1
    return tf.constant(image), tf.constant(mask)


def _seed(i):
    return tf.random.experimental.stateless_fold_in(tf.constant([0, 1], tf.int64), i)


def _run(spec, image, mask, i):
    out_image, out_mask = apply_ops(image, mask, _seed(i), parse_ops(spec))
    return out_image.numpy(), out_mask.numpy()


# ----------------------------------------------------------------------------- parsing, streams


def test_every_builtin_is_registered_and_the_string_parses_in_order():
    assert set(BUILTIN) <= set(op_names())
    spec = "flip_lr|flip_ud|rot90|affine(rotate=10,scale=0.1,translate=0.05)|gamma(0.7,1.5)"
    ops = parse_ops(spec + "|brightness_contrast(0.1, contrast=0.2)|noise(0.03)")
    assert [op.name for op in ops] == [
        "flip_lr", "flip_ud", "rot90", "affine", "gamma", "brightness_contrast", "noise",
    ]  # fmt: skip
    assert ops[3].kwargs == (("rotate", 10), ("scale", 0.1), ("translate", 0.05))
    assert ops[4].args == (0.7, 1.5) and not ops[4].geometric and ops[3].geometric
    assert ops[5].args == (0.1,) and ops[5].kwargs == (("contrast", 0.2),)
    assert parse_ops("") == [] and parse_ops("  ") == []
    # '|' splits only outside parentheses and quotes.
    assert ops_lib.split_ops("a(1, '|', (2|3)) | b") == ["a(1, '|', (2|3))", "b"]


def test_streams_depend_on_name_and_occurrence_only():
    a = parse_ops("noise(0.1)|gamma|noise(0.2)")
    b = parse_ops("rot90|gamma(0.5,2)|noise|flip_lr|noise(0.3)")
    assert a[0].stream == b[2].stream and a[2].stream == b[4].stream and a[1].stream == b[1].stream
    assert len({op.stream for op in a}) == 3  # a second noise draws from a stream of its own
    assert ops_lib.op_stream("noise", 0) == 917_516_605  # stable across processes and versions
    # The first of the four old augmentations keep their old numbers (1-4); no other op meets them.
    legacy = {"flip": 1, "rot90": 2, "affine": 3, "brightness_contrast": 4}
    assert {n: ops_lib.op_stream(n, 0) for n in legacy} == legacy
    hashed = [ops_lib.op_stream(n, k) for n in BUILTIN for k in range(3) if k or n not in legacy]
    assert min(hashed) >= 2**16 and len(set(hashed)) == len(hashed)


def test_adding_ops_leaves_the_others_draws_unchanged():
    image, mask = _pair()
    for i in range(8):
        # Geometric draws: the mask is the same with intensity and other ops inserted around.
        _, alone = _run("flip_lr|rot90|affine(rotate=20)", image, mask, i)
        spec = "gamma(0.5,2)|flip_lr|noise(0.2)|flip|rot90|affine(rotate=20)|brightness_contrast"
        _, among = _run(spec.replace("|flip|", "|"), image, mask, i)
        np.testing.assert_array_equal(alone, among)
        # Intensity draws: the ops inserted leave a constant image as it is (geometric ones, an
        # inversion of strength 0), so any change in the noise or the gamma would show.
        flat = tf.fill([32, 32, 1], 0.5)
        noisy, _ = _run("noise(0.05)|gamma(0.8,1.2)", flat, mask, i)
        spec = "flip_ud|rot90|tests.user_augment:invert(0.0)|flip_lr|noise(0.05)|gamma(0.8,1.2)"
        np.testing.assert_array_equal(noisy, _run(spec, flat, mask, i)[0])


def test_same_seed_same_output_other_seed_other_output():
    image, mask = _pair()
    spec = "flip_lr|rot90|affine|brightness_contrast|gamma|noise(0.03)"
    a, b, c = (_run(spec, image, mask, i) for i in (3, 3, 4))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


# ----------------------------------------------------------------------------- geometric ops


@pytest.mark.parametrize(
    ("name", "views"),
    [
        ("flip_lr", lambda x: [x, x[:, ::-1]]),
        ("flip_ud", lambda x: [x, x[::-1]]),
        ("flip", lambda x: [x, x[:, ::-1], x[::-1], x[::-1, ::-1]]),
        ("rot90", lambda x: [np.rot90(x, k) for k in range(4)]),
    ],
)
def test_flips_and_rot90_are_exact_permutations_of_image_and_mask_alike(name, views):
    image, mask = _pair()
    seen = set()
    for i in range(24):
        out_image, out_mask = _run(name, image, mask, i)
        matches = [k for k, v in enumerate(views(image.numpy())) if np.array_equal(out_image, v)]
        assert len(matches) == 1, (name, i)
        np.testing.assert_array_equal(out_mask, views(mask.numpy())[matches[0]])
        seen.add(matches[0])
    assert seen == set(range(len(views(image.numpy()))))  # every view is drawn


def test_flip_probability_argument():
    image, mask = _pair()
    for i in range(6):
        np.testing.assert_array_equal(_run("flip_lr(p=0)", image, mask, i)[0], image.numpy())
        np.testing.assert_array_equal(_run("flip_ud(1.0)", image, mask, i)[1], mask.numpy()[::-1])


def test_affine_with_identity_arguments_is_the_identity():
    image, mask = _pair()
    for i in range(4):
        out_image, out_mask = _run("affine(rotate=0,scale=0,translate=0)", image, mask, i)
        np.testing.assert_array_equal(out_image, image.numpy())
        np.testing.assert_array_equal(out_mask, mask.numpy())


def test_affine_mask_is_nearest_neighbour_sampled_and_binary():
    image, mask = _pair()
    spec = "affine(rotate=30,scale=0.3,translate=0.2)"
    (op,) = parse_ops(spec)
    for i in range(6):
        out_image, out_mask = _run(spec, image, mask, i)
        assert out_mask.dtype == np.uint8 and set(np.unique(out_mask)) <= {0, 1}
        # Oracle: sample the mask in numpy at the rounded source coordinates, 0 outside.
        op_seed = tf.random.experimental.stateless_fold_in(_seed(i), op.stream)
        a0, a1, a2, b0, b1, b2, _, _ = affine_transform(op_seed, 32, 30, 0.3, 0.2).numpy()
        y, x = np.mgrid[0:32, 0:32].astype(np.float64)
        sx = np.floor(a0 * x + a1 * y + a2 + 0.5).astype(int)
        sy = np.floor(b0 * x + b1 * y + b2 + 0.5).astype(int)
        inside = (sx >= 0) & (sx < 32) & (sy >= 0) & (sy < 32)
        expected = np.where(inside, mask.numpy()[np.clip(sy, 0, 31), np.clip(sx, 0, 31), 0], 0)
        assert (out_mask[..., 0] != expected).sum() <= 2  # rounding ties at most
        assert not np.array_equal(out_image, image.numpy())


@pytest.mark.parametrize("spec", GEOMETRIC)
def test_geometric_ops_keep_the_mask_binary_and_with_the_image(spec):
    image, mask = _pair()
    # A copy of the mask in the image: wherever the mask moves, the image's copy moves with it.
    image = tf.cast(mask, tf.float32) * 0.8 + 0.1
    for i in range(8):
        out_image, out_mask = _run(spec, image, mask, i)
        assert out_mask.dtype == np.uint8 and set(np.unique(out_mask)) <= {0, 1}
        agree = ((out_image > 0.5) == (out_mask > 0)).mean()
        assert agree > (0.97 if spec.startswith("affine") else 1 - 1e-9), (spec, i, agree)


# ----------------------------------------------------------------------------- intensity ops


@pytest.mark.parametrize("spec", INTENSITY)
def test_intensity_ops_change_the_image_only_and_stay_in_range(spec):
    image, mask = _pair()
    for i in range(4):
        out_image, out_mask = _run(spec, image, mask, i)
        np.testing.assert_array_equal(out_mask, mask.numpy())
        assert not np.array_equal(out_image, image.numpy())
        assert out_image.dtype == np.float32 and 0 <= out_image.min() <= out_image.max() <= 1
    (op,) = parse_ops(spec)
    assert not op.geometric and not ops_lib.is_geometric(op.fn)


def test_intensity_ops_with_neutral_arguments_are_the_identity():
    image, mask = _pair()
    for spec in ("gamma(1,1)", "noise(0)"):
        np.testing.assert_array_equal(_run(spec, image, mask, 0)[0], image.numpy())


# ----------------------------------------------------------------------------- a user's op


def test_a_users_op_by_import_path_and_registered():
    image, mask = _pair()
    out_image, out_mask = _run("tests.user_augment:invert(0.5)", image, mask, 0)
    np.testing.assert_allclose(out_image, 0.5, atol=1e-6)
    np.testing.assert_array_equal(out_mask, mask.numpy())
    for i in range(6):
        out_image, out_mask = _run("tests.user_augment:shift_down(max_rows=3)", image, mask, i)
        rows = [k for k in range(4) if np.array_equal(out_mask, np.roll(mask.numpy(), k, 0))]
        assert len(rows) == 1 and np.array_equal(out_image, np.roll(image.numpy(), rows[0], 0))
    from tests.user_augment import invert

    register_op("test_invert", invert)
    try:
        assert "test_invert" in op_names()
        np.testing.assert_array_equal(_run("test_invert", image, mask, 0)[0], 1 - image.numpy())
        with pytest.raises(ValueError, match="registered already"):
            register_op("test_invert", invert)
        with pytest.raises(ValueError, match="lower-case"):
            register_op("Invert", invert)
    finally:
        ops_lib._REGISTRY.pop("test_invert")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("flip|flop", r"unknown augmentation op 'flop'; valid: affine, brightness_contrast, flip,"),
        ("flip||rot90", r"cannot read the op ''"),
        ("affine(rotate=10", r"cannot read the op 'affine\(rotate=10'"),
        ("gamma(low=x)", r"cannot read the arguments of 'gamma\(low=x\)'.*Python literals"),
        ("noise(0.1,0.2)", r"bad arguments in 'noise\(0.1,0.2\)'.*takes noise\(std=0.03\)"),
        ("affine(rotation=10)", r"bad arguments .*unexpected keyword argument 'rotation'"),
        ("noise(std=-1)", r"the op 'noise\(std=-1\)' failed .*std=-1.0 must be >= 0"),
        ("affine(scale=1.5)", r"scale=1.5 must be in \[0, 1\)"),
        ("gamma('a')", r"the op \"gamma\('a'\)\" failed"),
        ("tests.user_augment:nope", r"cannot import the augmentation op .*valid: affine,"),
        ("no_such_module:op", r"cannot import .*ModuleNotFoundError"),
        ("tests.user_augment:blur_mask", r"made the mask non-binary \(values \[0, 1, 2\]\)"),
        ("tests.user_augment:to_uint8", r"returned an image <dtype: 'uint8'>"),
    ],
)
def test_bad_ops_are_refused_at_set_up_naming_the_setting(spec, message):
    config = tiny_config(**{"data.augmentations": spec})
    with pytest.raises(ValueError, match=r"config\.data\.augmentations") as error:
        validate_config(config, device_count=1, process_count=1)
    assert error.match(message)
    with pytest.raises(ValueError, match=message):
        check_augmentations(config.data)


def test_old_switches_are_checked_too():
    config = tiny_config(**{"data.augment.affine": True, "data.augment.max_scale": 2.0})
    with pytest.raises(ValueError, match=r"config\.data\.augment \(mapped onto .*scale=2\.0"):
        validate_config(config, device_count=1, process_count=1)


# ----------------------------------------------------------------------------- in the pipeline


def test_pipeline_augments_exactly_when_the_list_is_not_empty():
    config = tiny_config(batch_size=4)
    config.data.augmentations = "tests.user_augment:invert|gamma(0.9,1.1)|noise(0.01)|rot90"
    a = list(make_dataset(config, "train", epoch=0, **ONE_HOST))
    b = list(make_dataset(config, "train", epoch=0, **ONE_HOST))
    for x, y in zip(a, b, strict=True):
        for key in ("image", "mask", "id"):
            np.testing.assert_array_equal(x[key], y[key])
        assert set(np.unique(x["mask"])) <= {0, 1}
    config.data.augmentations = ""
    plain = list(make_dataset(config, "train", epoch=0, **ONE_HOST))
    assert not any(np.array_equal(x["image"], y["image"]) for x, y in zip(a, plain, strict=True))
    config.data.augmentations = "gamma(1,1)"  # not empty: augments, with the identity
    for x, y in zip(make_dataset(config, "train", epoch=0, **ONE_HOST), plain, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])


@pytest.mark.slow
def test_every_op_and_a_users_op_train_from_the_command_line(tmp_path):
    every = "|".join(BUILTIN) + "|tests.user_augment:invert(0.5)|tests.user_augment:shift_down"
    done = run_train_py(
        f"--workdir={tmp_path / 'run'}",
        "--config.num_epochs=1",
        f"--config.data.augmentations={every}",
        *SMALL_MODEL_FLAGS,  # the ops are under test, not the model
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "eval_validation.json").is_file()


def test_a_sweep_varies_the_augmentation_as_a_variant():
    sweep = ml_collections.ConfigDict()
    sweep.name = "augmentations"
    sweep.base_config = "configs/test.py"
    sweep.overrides = {}
    sweep.variants = {
        "flip": {"data": {"augmentations": "flip"}},
        "more": {"data": {"augmentations": "flip_lr|rot90|gamma(0.7,1.5)|noise(0.03)"}},
        "none": {"data": {"augmentations": ""}},
    }
    sweep.baseline = "flip"
    sweep.paper_model = ""
    sweep.seeds = (0,)
    sweep.folds = ()
    definition = sweeps.parse_sweep(sweep)
    base = load_config_file(definition.base_config, REPO)
    specs = {}
    for cell in sweeps.expand_cells(definition, "unused"):
        config = sweeps.cell_config(definition, base, cell)
        specs[cell.variant] = [op.name for op in check_augmentations(config.data)]
    assert specs == {"flip": ["flip"], "more": ["flip_lr", "rot90", "gamma", "noise"], "none": []}
