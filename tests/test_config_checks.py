"""validate_config: every bad setting is refused at set-up with the field's name."""

import pytest
from helpers import tiny_config

from bts_jax.train.config_checks import validate_config


def test_a_valid_config_passes():
    validate_config(tiny_config(), device_count=8, process_count=2)


@pytest.mark.parametrize(
    "overrides,device_count,process_count,message",
    [
        ({"batch_size": 4}, 3, 1, r"config\.batch_size=4 .*device count \(3\)"),
        ({"batch_size": 4}, 8, 1, r"config.batch_size=4 must be a positive multiple of the number"),
        ({"eval_batch_size": 12}, 8, 1, r"config.eval_batch_size=12"),
        (
            {"eval_batch_size": 4, "batch_size": 6},
            1,
            3,
            r"config\.eval_batch_size=4 .*process count \(3\)",
        ),
        ({"data.image_size": 40}, 1, 1, r"config\.data\.image_size .*multiple of 16.*40"),
        ({"data.image_size": 40}, 1, 1, r"config.data.image_size=40 must be a multiple of 16"),
        ({"data.image_size": 48, "model.features": (4, 8, 16, 32, 64)}, 1, 1, r"multiple of 32"),
        ({"optimizer.name": "sgdm"}, 1, 1, r"config.optimizer.name='sgdm'"),
        ({"optimizer.schedule": "step"}, 1, 1, r"config.optimizer.schedule='step'"),
        ({"optimizer.learning_rate": 0.0}, 1, 1, r"config.optimizer.learning_rate=0.0"),
        ({"optimizer.warmup_epochs": -1.0}, 1, 1, r"config.optimizer.warmup_epochs=-1.0"),
        ({"dtype": "float16"}, 1, 1, r"config.dtype='float16'"),
        ({"num_epochs": 0}, 1, 1, r"config.num_epochs=0"),
        ({"model.eca_in": "encoder,attention"}, 1, 1, r"config.model.eca_in has unknown entries"),
        ({"model.gsconv_in": "everywhere"}, 1, 1, r"config.model.gsconv_in has unknown entries"),
        ({"log_every_steps": 0}, 1, 1, r"config.log_every_steps=0"),
        ({"checkpoint.every_steps": -2}, 1, 1, r"config.checkpoint.every_steps=-2"),
        ({"ema_decay": 1.0}, 1, 1, r"config\.ema_decay=1\.0 must be a number in \[0, 1\)"),
        ({"ema_decay": -0.5}, 1, 1, r"config\.ema_decay=-0\.5 must be a number in \[0, 1\)"),
        ({"ema_start_step": -1}, 1, 1, r"config\.ema_start_step=-1 must be an integer >= 0"),
        ({"model.conv_impl": "mkl"}, 1, 1, r"config\.model\.conv_impl='mkl' must be one of"),
        (
            {"model.conv_impl": "onednn"},
            8,
            1,
            r"config\.model\.conv_impl='onednn' needs one device, and this run has 8",
        ),
    ],
)
def test_bad_settings_are_named(overrides, device_count, process_count, message):
    with pytest.raises(ValueError, match=message):
        validate_config(
            tiny_config(**overrides), device_count=device_count, process_count=process_count
        )
