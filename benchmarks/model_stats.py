"""Prints parameter counts and forward FLOPs (XLA cost analysis) of the configs and of every block.

python benchmarks/model_stats.py                 # 512x512, the paper's size
python benchmarks/model_stats.py --image_size=256
python benchmarks/model_stats.py --zoo_config=   # the configs' table only

The second table is the U-Net of ``--zoo_config`` (the plain U-Net by default) with each
registered attention in encoder, bottleneck and decoder (its convolution unchanged), then with
each registered convolution (its attention unchanged): ``config.model.attention=NAME`` and
``config.model.conv=NAME``.
"""

import importlib

import bench_flags
from absl import app, flags

from bts_jax.models import attention_names, build_model, conv_names, model_summary

FLAGS = flags.FLAGS
bench_flags.define_image_size_flag(512, "Input height and width.")
flags.DEFINE_list(
    "configs",
    ["unet_baseline", "ablation_eca_only", "ablation_gsconv_only", "default", "quickstart"],
    "Config modules under configs/.",
)
flags.DEFINE_string(
    "zoo_config", "unet_baseline", "Config of the per-block table ('' = no per-block table)."
)


def _load(name):
    return importlib.import_module(f"bts_jax.configs.{name}").get_config()


def main(argv):
    del argv
    size = f"{FLAGS.image_size}x{FLAGS.image_size}"
    print(f"| config | parameters | GFLOPs / image at {size} |")
    print("|---|---:|---:|")
    for name in FLAGS.configs:
        summary = model_summary(build_model(_load(name).model), FLAGS.image_size)
        print(f"| {name} | {summary['params']:,} | {summary['gflops_per_image']:.1f} |")
    if not FLAGS.zoo_config:
        return
    widths = _load(FLAGS.zoo_config).model.features
    print(f"\nBlocks in the U-Net of configs/{FLAGS.zoo_config}.py, widths {widths}:\n")
    print(f"| setting | parameters | GFLOPs / image at {size} |")
    print("|---|---:|---:|")
    for field, names in (("attention", attention_names()), ("conv", conv_names())):
        for name in names:
            config = _load(FLAGS.zoo_config)
            config.model[field] = name
            summary = model_summary(build_model(config.model), FLAGS.image_size)
            row = f"`{field}={name}` | {summary['params']:,} | {summary['gflops_per_image']:.1f}"
            print(f"| {row} |", flush=True)


if __name__ == "__main__":
    app.run(main)
