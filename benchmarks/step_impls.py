"""The two train steps benchmarks/vs_pytorch.py times, each an `Impl`.

`jax_impl` is the library's own jitted train step (forward, BCE + soft Dice, backward, Adam; state
donated); `torch_twin` builds the PyTorch twin (benchmarks/torch_unet.py) from the same initial
weights, `check_agreement` checks both compute the same logits before anything is timed, and
`torch_impl` is the twin's train step (eager or ``torch.compile``); `set_tf32` sets TF32 in both
frameworks. PyTorch is imported only inside the torch functions, so the JAX side runs without it.
"""

import copy
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def library_function(name: str):
    """The library function ``name`` wherever this version of bts_jax keeps it (old ones too)."""
    modules = ("bts_jax.train.steps", "bts_jax.train.state", "bts_jax.train.optim")
    modules += ("bts_jax.sharding", "bts_jax.steps", "bts_jax.state", "bts_jax.train_lib")
    for module in modules:
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if found is not None:
            return found
    raise ImportError(f"bts_jax has no {name} in {', '.join(modules)}")


@dataclass
class Impl:
    """One implementation of the train step being timed."""

    name: str
    run: Callable[[int], None]  # runs n steps and waits for them
    dtype: str = "float32"
    memory: Callable[[], float | None] = lambda: None  # peak bytes during its timed rounds
    images_per_s: list[float] = field(default_factory=list)


def jax_impl(config, batch: dict, mesh):
    """Builds the library's train step for ``config``; returns (Impl, state, model, FLOPs/step)."""
    import jax
    import optax

    from bts_jax.models import build_model

    model = build_model(config.model, dtype=config.dtype)
    optimizer = library_function("create_optimizer")(
        config.optimizer, optax.constant_schedule(1e-4)
    )
    state = library_function("create_train_state")(config, model, optimizer, mesh)
    step = library_function("make_train_step")(config, model, optimizer, mesh)
    device_batch = library_function("make_global_batch")(batch, mesh)
    # Keep an undonated copy of the initial variables for the agreement check and the twin.
    initial = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    start = time.perf_counter()
    compiled = step.lower(state, device_batch).compile()
    print(f"  bts_jax {config.dtype}: compiled in {time.perf_counter() - start:.1f} s")
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    holder = {"state": state}

    def run(n: int) -> None:
        state = holder["state"]
        for _ in range(n):
            state, step_metrics = compiled(state, device_batch)
        jax.block_until_ready(step_metrics["loss"])
        holder["state"] = state

    def peak_bytes():
        if memory is None:
            return None
        return (
            memory.temp_size_in_bytes
            + memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
        )

    name = f"bts_jax {config.dtype}"
    if config.model.gsconv_in and config.model.depthwise_impl != "auto":
        name += f" (depthwise {config.model.depthwise_impl})"
    if config.model.upsample_impl != "auto":
        name += f" (upsample {config.model.upsample_impl})"
    if config.model.get("conv_impl", "auto") != "auto":
        name += f" (conv {config.model.conv_impl})"
    impl = Impl(name, run, dtype=config.dtype, memory=peak_bytes)
    return impl, initial, model, float(cost["flops"])


def torch_twin(config, initial: dict):
    """The PyTorch twin of ``config``'s model holding the Flax ``initial`` variables."""
    # The twin (beside this file) imports PyTorch, so it is imported only when asked for.
    import torch_unet

    from bts_jax.models import eca_kernel_size

    places = lambda value: {p for p in value.split(",") if p}  # noqa: E731
    k = int(config.model.eca_kernel_size)
    twin = torch_unet.UNet(
        config.model.features,
        places(config.model.gsconv_in),
        places(config.model.eca_in),
        (lambda c: k) if k else eca_kernel_size,
        gsconv_act=config.model.gsconv_act,
        gsconv_shuffle=config.model.gsconv_shuffle,
        num_classes=int(config.model.num_classes),
    )
    torch_unet.load_flax_variables(twin, initial)
    return twin


def check_agreement(model, initial: dict, twin, batch: dict, tolerance: float) -> dict[str, float]:
    """Max relative logit error of the twin against the Flax model, in eval and train mode.

    Args:
      model: the Flax UNet (float32).
      initial: its variables.
      twin: the PyTorch twin with the same weights (left unchanged: train mode runs on a copy).
      batch: from :func:`make_batch`.
      tolerance: the largest relative error accepted.

    Returns:
      ``{"eval": error, "train": error}``, each ``max|jax - torch| / max|jax|``.

    Raises:
      SystemExit: when an error exceeds ``tolerance``; nothing is timed then.
    """
    import jax
    import numpy as np
    import torch

    x = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
    # Jitted: one compile per mode instead of one per operation of an eager apply.
    apply = {
        "eval": jax.jit(lambda v, x: model.apply(v, x, train=False)),
        "train": jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0]),
    }
    errors = {}
    for mode in ("eval", "train"):
        train = mode == "train"
        logits = apply[mode](initial, batch["image"])
        net = copy.deepcopy(twin).train(train)
        with torch.no_grad():
            theirs = net(x).permute(0, 2, 3, 1).numpy()
        ours = np.asarray(logits, np.float32)
        errors[mode] = float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(ours)), 1e-12))
    print(f"  max relative logit error: eval {errors['eval']:.1e}, train {errors['train']:.1e}")
    if max(errors.values()) > tolerance:
        raise SystemExit(
            f"The PyTorch twin disagrees with bts_jax (tolerance {tolerance}); not timing."
        )
    return errors


def torch_impl(twin, batch: dict, compile_model: bool, dtype: str = "float32"):
    """The PyTorch train step (forward, same loss, backward, Adam) of ``twin``, on its device.

    ``dtype="bfloat16"`` runs the forward pass and the loss under ``torch.autocast`` (bfloat16
    convolutions with float32 weights, PyTorch's mixed precision), the counterpart of bts_jax's
    ``config.dtype="bfloat16"``.
    """
    import torch
    import torch_unet

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = copy.deepcopy(twin).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    forward = torch.compile(net) if compile_model else net
    x = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous().to(device)
    mask = torch.from_numpy(batch["mask"]).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def run(n: int) -> None:
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = torch_unet.segmentation_loss(forward(x), mask)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        else:
            loss.item()

    def peak_bytes():
        return torch.cuda.max_memory_allocated() if device.type == "cuda" else None

    name = "torch.compile" if compile_model else "torch eager"
    name += " bfloat16 autocast" if dtype == "bfloat16" else " float32"
    return Impl(name, run, dtype=dtype, memory=peak_bytes)


def cuda_available() -> bool:
    """Whether PyTorch is installed and sees a GPU."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def set_tf32(setting: str) -> str:
    """Applies ``--tf32`` to JAX and (if imported) PyTorch; returns a line describing it."""
    import jax

    if setting == "default":
        return "TF32: each framework's default"
    on = setting == "on"
    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if on else "float32")
    try:
        import torch
    except ImportError:
        return f"TF32: {setting} (JAX)"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return f"TF32: {setting} in both frameworks (JAX precision and torch allow_tf32)"
