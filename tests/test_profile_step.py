"""benchmarks/profile_step.py: wall time shared among concurrent operations, and the classification
of a real compiled train step's operations (benchmarks/hlo_ops.py, as profile_step.hlo)."""

import pytest


@pytest.fixture(scope="module")
def profile_step():
    # Imported on first use: the module defines the script's absl flags.
    import profile_step

    return profile_step


def test_overlapping_operations_share_the_time_they_run_together(profile_step):
    interval = profile_step.Interval
    shares, wall, gap = profile_step.share_wall_time(
        [interval("a", 0, 10), interval("b", 5, 15), interval("c", 20, 30)]
    )
    # a alone 0-5, a and b together 5-10 (half each), b alone 10-15, nothing 15-20, c 20-30.
    assert shares == pytest.approx({"a": 7.5, "b": 7.5, "c": 10.0})
    assert (wall, gap) == (30, 5)


@pytest.mark.parametrize(
    "op_name,expected",
    [
        (
            "jit(train_step)/transpose(jvp(UNet))/dec_3/conv_0/conv/conv_general_dilated",
            ("dec_3/conv_0/conv", True, True),
        ),
        (
            "jit(train_step)/jvp(UNet)/enc_0/conv_1/bn/jit(relu)/max",
            ("enc_0/conv_1/bn", False, True),
        ),
        ("jit(train_step)/jvp()/sub", ("", False, True)),
        (
            "jit(train_step)/transpose(jvp(UNet))/up_1/conv/bhwc,ijco->bhiwjo/dot_general",
            ("up_1/conv", True, True),
        ),
        ("jit(train_step)/transpose(jvp(UNet))/concatenate", ("UNet", True, True)),
        ("jit(train_step)/add", ("", False, False)),
    ],
)
def test_layer_path_reads_the_module_and_the_pass(profile_step, op_name, expected):
    assert profile_step.hlo.layer_path(op_name) == expected


def test_a_real_step_is_classified_by_pass_and_layer(profile_step):
    from bts_jax.configs import test as test_config

    config = test_config.get_config()
    config.model.features = (4, 8)
    config.model.gsconv_in = config.model.eca_in = ""
    config.data.image_size = 16
    config.batch_size = 2
    compiled, state, batch, kernels, _ = profile_step.build_step(config)
    module = profile_step.hlo.parse_hlo(compiled.as_text())
    assert kernels["enc_0/conv_0/conv"] == (3, 3, 1, 4)
    with_convs = {}
    for name, instruction in module.by_name.items():
        if module.owner[name].startswith("main") and instruction.opcode not in ("parameter",):
            inner = [instruction, *profile_step.hlo.called_instructions(module, instruction)]
            if any(i.opcode in ("convolution", "dot") for i in inner):
                with_convs[name] = profile_step.hlo.classify(module, name, kernels)
    categories = {info.category for info in with_convs.values()}
    # Every 3x3 convolution has a forward pass, an input gradient and a kernel gradient; the
    # up-convolution (a GEMM on CPU) and the head have their own.
    assert {"conv forward", "conv input gradient", "conv kernel gradient"} <= categories
    assert {"up-conv forward", "up-conv kernel gradient"} <= categories
    assert all(info.layer for info in with_convs.values())
    assert all(info.flops > 0 for info in with_convs.values())

    profile, plain, traced = profile_step.profile_steps(compiled, state, batch, 2, 1, "")
    runs = profile_step.op_intervals(profile, module.name)
    assert len(runs) == 2  # one execution per profiled step
    ms, info, wall, gap = profile_step.breakdown(module, kernels, runs)
    assert 0 < sum(ms.values()) <= 1.5 * wall and gap >= 0
    categories, top_ops, layers = profile_step.tables(ms, info, top=5)
    assert sum(row.share for row in categories) == pytest.approx(1.0)
    assert len(top_ops) == 5 and len(layers) == 5
