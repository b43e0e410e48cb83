"""Prints parameter counts and forward FLOPs (XLA cost analysis) of the model configs.

python benchmarks/model_stats.py                 # 512x512, the paper's size
python benchmarks/model_stats.py --image_size=256
"""

import importlib

from absl import app, flags

from bts_jax.models import build_model, model_summary

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 512, "Input height and width.")
flags.DEFINE_list(
    "configs",
    ["unet_baseline", "ablation_eca_only", "ablation_gsconv_only", "default", "quickstart"],
    "Config modules under configs/.",
)


def main(argv):
    del argv
    print(f"| config | parameters | GFLOPs / image at {FLAGS.image_size}x{FLAGS.image_size} |")
    print("|---|---:|---:|")
    for name in FLAGS.configs:
        config = importlib.import_module(f"bts_jax.configs.{name}").get_config()
        summary = model_summary(build_model(config.model), FLAGS.image_size)
        print(f"| {name} | {summary['params']:,} | {summary['gflops_per_image']:.1f} |")


if __name__ == "__main__":
    app.run(main)
