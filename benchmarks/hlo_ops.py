"""The compiled train step's operations, read from its HLO text and classified (profile_step.py).

`parse_hlo` reads ``compiled.as_text()`` into computations and instructions; `classify` puts each
operation of the entry computation into one of `CATEGORIES` (convolution forward / input gradient /
kernel gradient, up-convolution, depthwise, BatchNorm, activation, ECA, loss, optimizer, data
movement...) with the Flax layer it belongs to and, for convolutions and dots, its FLOPs. The
method is described in ``benchmarks/profile_step.py``'s docstring (step 3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

# The categories, in the order they are printed.
CATEGORIES = (
    "conv forward",
    "conv input gradient",
    "conv kernel gradient",
    "up-conv forward",
    "up-conv input gradient",
    "up-conv kernel gradient",
    "depthwise forward",
    "depthwise input gradient",
    "depthwise kernel gradient",
    "BatchNorm forward",
    "BatchNorm backward",
    "activation forward",
    "activation backward",
    "max pool",
    "ECA",
    "loss",
    "optimizer",
    "reductions (other)",
    "copies/transposes",
    "other",
)
ACTIVATION_NAMES = ("relu", "mish", "silu", "tanh", "softplus", "logistic", "log1p", "exp")
DATA_MOVEMENT = {
    "copy",
    "transpose",
    "concatenate",
    "pad",
    "slice",
    "dynamic-slice",
    "dynamic-update-slice",
    "reverse",
    "bitcast",
    "broadcast",
    "reshape",
    "iota",
    "constant",
    "parameter",
    "tuple",
    "get-tuple-element",
    "convert",
}


# ----------------------------------------------------------------------------- HLO parsing


@dataclass
class Instruction:
    """One HLO instruction of the compiled module's text."""

    name: str
    shape: str  # e.g. "f32[4,96,96,16]{3,2,1,0}" (or a tuple)
    opcode: str
    operands: list[str]
    attributes: str  # the text after the operand list
    op_name: str  # JAX's source metadata, "" if none

    @property
    def dims(self) -> list[int]:
        """The dimensions of an array shape (the first array of a tuple)."""
        found = re.search(r"\[([0-9,]*)\]", self.shape)
        return [int(d) for d in found.group(1).split(",") if d] if found else []


@dataclass
class Module:
    """The compiled module: computations name -> instructions, and an index by instruction."""

    name: str = ""  # the HloModule's name, as trace events give it (stat hlo_module)
    computations: dict[str, list[Instruction]] = field(default_factory=dict)
    by_name: dict[str, Instruction] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)  # instruction -> computation


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")


def _split_operands(rest: str) -> tuple[list[str], str]:
    """Splits ``a, b), attrs`` at the closing parenthesis of the operand list."""
    depth = 0
    for i, char in enumerate(rest):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            if depth == 0:
                operands = re.findall(r"%([\w.\-]+)", rest[:i])
                return operands, rest[i + 1 :]
            depth -= 1
    return re.findall(r"%([\w.\-]+)", rest), ""


def parse_hlo(text: str) -> Module:
    """Parses the instructions of ``compiled.as_text()`` (enough for classification)."""
    module = Module()
    found = re.search(r"^HloModule ([\w.\-]+)", text, re.MULTILINE)
    module.name = found.group(1) if found else ""
    current = None
    for line in text.splitlines():
        if current is None or line.startswith(("ENTRY", "%")):
            found = _COMPUTATION.match(line)
            if found:
                current = found.group(1)
                module.computations[current] = []
                continue
        found = _INSTRUCTION.match(line)
        if not found or current is None:
            continue
        name, shape, opcode, rest = found.groups()
        operands, attributes = _split_operands(rest)
        op_name = re.search(r'op_name="([^"]*)"', attributes)
        instruction = Instruction(
            name, shape, opcode, operands, attributes, op_name.group(1) if op_name else ""
        )
        module.computations[current].append(instruction)
        module.by_name[name] = instruction
        module.owner[name] = current
    return module


def called_instructions(module: Module, instruction: Instruction) -> list[Instruction]:
    """The instructions of the computations ``instruction`` calls (a fusion's body), recursively."""
    found = []
    callees = re.findall(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)", instruction.attributes)
    for callee in callees:
        for inner in module.computations.get(callee, []):
            found.append(inner)
            found += called_instructions(module, inner)
    return found


def operand_dims(module: Module, instruction: Instruction, index: int) -> list[int]:
    """Dimensions of operand ``index`` of ``instruction`` (looked up by name)."""
    if index >= len(instruction.operands):
        return []
    operand = module.by_name.get(instruction.operands[index])
    return operand.dims if operand else []


# ----------------------------------------------------------------------------- classification


@dataclass
class OpInfo:
    """What one thunk (HLO operation) computes."""

    category: str
    layer: str  # Flax module path, e.g. "enc_0/conv_0/dense/conv"; "" if none
    detail: str  # e.g. "convolution window 3x3 -> f32[4,96,96,16]"
    flops: float = 0.0


def layer_path(op_name: str) -> tuple[str, bool, bool]:
    """(module path, backward?, inside the differentiated function?) from JAX's ``op_name``."""
    parts = op_name.split("/")
    backward = any(part.startswith("transpose(") for part in parts)
    for i, part in enumerate(parts):
        if part.startswith(("jvp(", "transpose(jvp(")):
            # Not the transformations' names, nor an einsum's equation ("bhwc,ijco->bhiwjo").
            names = [p for p in parts[i + 1 : -1] if "(" not in p and "->" not in p]
            # The model's own top-level operations (e.g. the skip concatenations) carry no
            # submodule: name them after the model; the loss is traced as "jvp()".
            top = part.split("(")[-1].rstrip(")")
            return "/".join(names) or top, backward, True
    return "", backward, False


def _layer_with_kernel_of(kernels: dict[str, tuple[int, ...]], dims: list[int]) -> str:
    """The one layer whose kernel has the elements of ``dims`` in some order, else ``""``."""
    found = [layer for layer, shape in kernels.items() if sorted(shape) == sorted(dims)]
    return found[0] if len(found) == 1 else ""


def _conv_flops(module: Module, conv: Instruction) -> tuple[float, list[int]]:
    """(FLOPs, window sizes) of a convolution instruction."""
    window = re.search(r"window=\{size=([0-9x]+)", conv.attributes)
    sizes = [int(s) for s in window.group(1).split("x")] if window else [1]
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", conv.attributes)
    lhs = operand_dims(module, conv, 0)
    groups = re.search(r"feature_group_count=(\d+)", conv.attributes)
    in_features = 1
    if labels and lhs and "f" in labels.group(1):
        in_features = lhs[labels.group(1).index("f")]
    in_features //= int(groups.group(1)) if groups else 1
    return 2.0 * np.prod(conv.dims) * np.prod(sizes) * in_features, sizes


def _dot_flops(module: Module, dot: Instruction) -> float:
    lhs = operand_dims(module, dot, 0)
    contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", dot.attributes)
    size = 1
    if contracting and lhs:
        for d in contracting.group(1).split(","):
            if d:
                size *= lhs[int(d)]
    return 2.0 * np.prod(dot.dims) * size


def _kernel_window(kernels: dict[str, tuple[int, ...]], layer: str) -> tuple[int, ...] | None:
    shape = kernels.get(layer)
    return tuple(shape[:-2]) if shape and len(shape) >= 3 else None


def classify(module: Module, name: str, kernels: dict[str, tuple[int, ...]]) -> OpInfo:
    """Classifies the thunk ``name`` (an HLO instruction of the entry computation)."""
    instruction = module.by_name.get(name)
    if instruction is None:
        return OpInfo("other", "", "not in the HLO text")
    inner = [instruction, *called_instructions(module, instruction)]
    op_names = [i.op_name for i in inner if i.op_name]
    op_name = instruction.op_name or (op_names[-1] if op_names else "")
    layer, backward, differentiated = layer_path(op_name)
    opcodes = {i.opcode for i in inner} - {"fusion"}
    convs = [i for i in inner if i.opcode == "convolution"]
    dots = [i for i in inner if i.opcode == "dot"]
    if convs or dots:
        if convs:
            flops, window = _conv_flops(module, convs[0])
            layer, backward, _ = layer_path(convs[0].op_name or op_name)
            if not layer:
                # XLA drops the metadata of some rewritten kernel gradients (a layer with one
                # input channel): their output has the kernel's shape, which names the layer.
                layer = _layer_with_kernel_of(kernels, convs[0].dims)
                backward = bool(layer)
            shape = "x".join(map(str, window))
            detail = f"convolution window {shape} -> {convs[0].shape.split('{')[0]}"
        else:
            flops, window = _dot_flops(module, dots[0]), None
            layer, backward, _ = layer_path(dots[0].op_name or op_name)
            detail = f"dot -> {dots[0].shape.split('{')[0]}"
        kind = "conv"
        if "depthwise" in layer.split("/"):
            kind = "depthwise"
        elif layer.startswith("up_") or "/up_" in layer:
            kind = "up-conv"
        elif "eca" in layer.split("/"):
            return OpInfo("ECA", layer, detail, flops)
        if not backward:
            return OpInfo(f"{kind} forward", layer, detail, flops)
        kernel = _kernel_window(kernels, layer)
        if window is None:  # A dot: the kernel gradient has as many elements as the kernel.
            size = kernels.get(layer)
            is_kernel = size is not None and np.prod(dots[0].dims) == np.prod(size)
        elif kernel is not None:
            is_kernel = tuple(window) != kernel
        else:
            is_kernel = max(window) > 7
        return OpInfo(f"{kind} {'kernel' if is_kernel else 'input'} gradient", layer, detail, flops)

    detail = ", ".join(sorted(opcodes)) or instruction.opcode
    parts = layer.split("/")
    if opcodes & {"reduce-window", "select-and-scatter", "scatter"} or "max_pool" in op_name:
        return OpInfo("max pool", layer, detail)
    if "eca" in parts:
        return OpInfo("ECA", layer, detail)
    if "bn" in parts:
        return OpInfo(f"BatchNorm {'backward' if backward else 'forward'}", layer, detail)
    is_activation = any(
        re.search(rf"\b{act}\b|jit\({act}\)", n) for n in op_names for act in ACTIVATION_NAMES
    )
    if is_activation and layer:
        return OpInfo(f"activation {'backward' if backward else 'forward'}", layer, detail)
    # Concatenations (the skip connections, GSConv's halves) with any elementwise work that XLA
    # fused into them count as data movement.
    if opcodes and (
        opcodes <= DATA_MOVEMENT or "concatenate" in opcodes and "reduce" not in opcodes
    ):
        return OpInfo("copies/transposes", layer, detail)
    if differentiated and not layer:
        return OpInfo("loss", layer, detail)
    if not differentiated and op_name:
        return OpInfo("optimizer", layer, detail)
    if "reduce" in opcodes:
        return OpInfo("reductions (other)", layer, detail)
    return OpInfo("other", layer, detail)
