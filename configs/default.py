"""The paper's improved U-Net (GSConv + ECA in encoder, bottleneck and decoder) at 512x512.

Trains on the bundled real sample unless a dataset is given. On the full Kaggle/figshare folder:

    python train.py --config configs/default.py --workdir workdirs/default \
        --config.data.source=folder --config.data.data_dir=/path/to/brain_tumor_folder

Every field below can be overridden the same way, e.g. ``--config.model.eca_in=encoder,decoder``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Returns the default experiment config (paper model, docs/design.md sections 2-5)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Seeds trained together in one program, seed + k for k < num_seeds, each written as its own
    # run in workdir/seed_<seed + k>/ (docs/architecture.md). On CPU it was slower than the runs
    # one by one (0.57-0.97x images/s at K = 2-8, benchmarks/seeds_throughput.py).
    config.num_seeds = 1
    # Compute dtype of the model: "float32" or "bfloat16". Parameters, optimiser state, BatchNorm
    # statistics and losses always stay float32.
    config.dtype = "float32"

    config.model = ml_collections.ConfigDict()
    config.model.name = "unet"
    config.model.features = (64, 128, 256, 512)  # encoder widths; bottleneck = 2 * last
    config.model.num_classes = 1  # 1 = binary tumour logit; >1 = softmax classes
    config.model.upsample = "transpose"  # "transpose" | "bilinear"
    # Comma-separated subsets (so the command line can set them): "" means nowhere.
    config.model.gsconv_in = "encoder,bottleneck,decoder"
    config.model.eca_in = "encoder,bottleneck,decoder"
    # Blocks by name (docs/extending.md, docs/design.md section 9). "" = as gsconv_in / eca_in
    # say. A name sets encoder, bottleneck and decoder ("se"); "group:name" pairs set one group
    # each ("encoder:se,decoder:eca"; attention also has the group "skip"); where they name a
    # group they win over gsconv_in / eca_in. A name is registered (conv: double_conv | gsconv |
    # dsconv | ghost; attention: none | eca | se | cbam | coord | scse) or an import path
    # "package.module:Class".
    config.model.conv = ""
    config.model.attention = ""
    config.model.gsconv_act = "mish"  # "mish" | "silu" | "relu"
    config.model.gsconv_shuffle = "interleave"  # "interleave" | "legacy" | "none"
    # GSConv's depthwise 5x5: "auto" ("shifted" on CPU, "grouped" elsewhere) | "grouped" | "dense"
    # | "shifted". The same function either way; on XLA:CPU "dense" is ~1.7x faster than
    # "grouped" and "shifted" ~1.2x faster than "dense" (docs/performance.md).
    config.model.depthwise_impl = "auto"
    # The decoder's 2x2 stride-2 up-convolution: "auto" ("gemm" on CPU, "conv_transpose"
    # elsewhere) | "conv_transpose" (nn.ConvTranspose) | "gemm" (one matrix product). The same
    # function and parameters either way; "gemm" is faster on XLA:CPU (docs/performance.md).
    config.model.upsample_impl = "auto"
    # The dense convolutions (and their gradients): "auto" (oneDNN on a CPU with one device when
    # the extension builds: pip install "bts_jax[onednn]" and a g++; else XLA) | "xla" | "onednn"
    # (fails, saying why, where it cannot run). The same function either way; oneDNN's kernels
    # run the quickstart's convolutions 2-5x faster than XLA:CPU's (bts_jax/models/onednn).
    config.model.conv_impl = "auto"
    config.model.eca_kernel_size = 0  # 0 = from the channel count (ECA-Net rule)
    # Squeeze-excite MLPs (se, cbam, scse): C -> max(C // r, min(C, 8)) -> C.
    config.model.se_reduction = 16
    # The norm of every block (bts_jax/models/norms.py): "batch" (momentum 0.9, eps 1e-5; the only
    # one with running statistics) | "group(G)" (min(G, C) groups must divide each width C) |
    # "instance" | "layer" | "none", arguments as "batch(momentum=0.99)", or an import path
    # "package.module:name" (docs/extending.md).
    config.model.norm = "batch"
    # The head's initial tumour probability p: its bias starts at log(p / (1 - p)) (Lin et al.
    # 2017). None = a zero bias (p = 0.5); a number in (0, 1); "auto" = the tumour pixel fraction
    # of the training split, recorded in environment.json and the log.
    config.model.output_bias_prior = ml_collections.config_dict.placeholder(object)

    config.data = ml_collections.ConfigDict()
    # "sample" | "sample_128" (bundled, see bts_jax/data/sample*/README.md) | "folder" | "tfds"
    config.data.source = "sample"
    config.data.data_dir = ""  # folder with images/ and masks/ (source=folder) or TFDS data_dir
    config.data.image_size = 512
    config.data.resize_method = "resize"  # "resize" (image bilinear, mask nearest) | "pad"
    config.data.equalize = True  # cv2.equalizeHist-exact histogram equalisation
    config.data.strict_masks = False  # non-binary masks: warn (False) or fail (True)
    config.data.split_method = "blocked"  # "blocked" | "random" (leaks patients) | "kfold"
    config.data.val_fraction = 0.2
    # The last block of each tumour type's ids, the same for every seed, fold and split method: the
    # only split that is reported. 0 = no test split (the paper's 80/20 train/validation protocol).
    config.data.test_fraction = 0.15
    config.data.split_gap = 0  # ids dropped between adjacent blocks (train | validation | test)
    config.data.num_folds = 5  # split_method="kfold"
    config.data.fold = 0
    config.data.subset_size = 0  # 0 = all pairs; the paper used 500
    config.data.cache = True  # keep decoded + equalised + resized examples in memory
    # Training augmentation: ops applied in order, "op|op(arguments)|..." (README, "Configs";
    # docs/extending.md), e.g. "flip_lr|flip_ud|rot90|affine(rotate=10,scale=0.1,translate=0.05)|
    # brightness_contrast(0.1,0.1)|gamma(0.7,1.5)|noise(0.03)". "" = none. Ops: flip (both axes),
    # flip_lr | flip_ud | rot90 | affine | brightness_contrast | gamma | noise, or an import path
    # "package.module:function".
    config.data.augmentations = "flip"
    # The old spelling, kept so that old configs keep their meaning, draw for draw: changed
    # switches map onto config.data.augmentations (bts_jax/data/augment_config.py).
    config.data.augment = ml_collections.ConfigDict()
    config.data.augment.flip = True
    config.data.augment.rot90 = False
    config.data.augment.affine = False
    config.data.augment.max_rotate_deg = 10.0
    config.data.augment.max_scale = 0.1
    config.data.augment.max_translate = 0.05
    config.data.augment.brightness_contrast = False
    config.data.augment.max_brightness = 0.1
    config.data.augment.max_contrast = 0.1

    config.batch_size = 8  # global, over all devices and hosts
    config.eval_batch_size = 8
    config.num_epochs = 50

    config.optimizer = ml_collections.ConfigDict()
    # Recipe parts by name, with arguments as in "name(key=value)" (docs/extending.md), or an
    # import path "package.module:function". Optimisers: adam | adamw(weight_decay=...,
    # decay_norms_and_biases=...) | sgd(momentum=0.9,nesterov=false) | lamb.
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-4  # the peak rate of the schedule
    # The default of every optimiser that takes weight_decay (adamw, sgd, lamb), unless its name
    # sets it.
    config.optimizer.weight_decay = 0.0
    # constant | cosine(final=0.0) | poly(power=0.9) | linear(final=0.0) | one_cycle, each after
    # warmup_epochs of linear warmup from 0.
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_epochs = 0.0
    config.optimizer.grad_clip_norm = 0.0  # 0 = no clipping; clips before any optimiser

    config.loss = ml_collections.ConfigDict()
    # A loss (bce_dice | bce | dice(per_image=false) | focal(gamma=2) | tversky(alpha=0.5,
    # beta=0.5) | focal_tversky), an import path, or a weighted sum "focal(gamma=2):1,dice:1".
    # "" = bce_dice with the two weights below (every config from before the loss registry).
    config.loss.name = ""
    config.loss.bce_weight = 1.0  # cross-entropy weight (BCE, or softmax CE for >1 class)
    config.loss.dice_weight = 1.0  # soft Dice weight

    # Weight averaging (docs/design.md): an exponential moving average of the parameters and the
    # BatchNorm statistics, ema = decay * ema + (1 - decay) * weights after every step. 0 = off.
    # When on, validation (and so the best checkpoint), the final evaluation, evaluate.py,
    # predict.py, export.py and ensembles use the average; checkpoints hold both.
    config.ema_decay = 0.0  # in [0, 1); e.g. 0.999 averages over about 1000 steps
    config.ema_start_step = 0  # until this optimiser step the average equals the weights

    config.checkpoint = ml_collections.ConfigDict()
    # The latest saves kept in checkpoints/; 0 keeps every one (each can be scored afterwards,
    # e.g. evaluate.py --which=step:N, benchmarks/quality_vs_compute.py).
    config.checkpoint.max_to_keep = 3
    config.checkpoint.every_steps = 0  # 0 = at the end of every epoch

    config.log_every_steps = 10
    config.num_predictions = 8  # validation images drawn to workdir/predictions at the end
    config.eval_every_epochs = 1
    return config
