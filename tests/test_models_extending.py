"""docs/extending.md's blocks part runs: its code blocks are extracted and executed, its commands
checked (the recipe part: tests/test_train_extending.py).

Python blocks run in order in one namespace, in a temporary folder on the Python path; a block
starting ``# file: PATH`` is written there instead (``(continued)`` appends). Each ``train.py``
command is parsed by the same flag parser as ``train.py``, its model built and its augmentation
ops checked (`bts_jax.data.check_augmentations`); the ``sweep.py``
command runs, at tiny sizes (one stage of width 4, 32x32, one epoch, one seed), through
`bts_jax.experiments.runner.run_sweep`, as ``sweep.py`` does.
"""

import os
import re
import shlex
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from bts_jax.config_tools import load_config_file
from bts_jax.data import augment_ops, check_augmentations
from bts_jax.experiments import runner, sweeps
from bts_jax.models import build_model, norms, registry
from bts_jax.naming import calls

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "extending.md")
FILE_LINE = re.compile(r"# file: (\S+)( \(continued\))?\n")


def doc_parts(path=DOC):
    """The page's parts, split at its level-1 headings (outside code blocks)."""
    parts, fenced = [[]], False
    with open(path) as f:
        for line in f:
            fenced ^= line.startswith("```")
            if line.startswith("# ") and not fenced and parts[-1]:
                parts.append([])
            parts[-1].append(line)
    return ["".join(part) for part in parts]


def code_blocks(path=DOC, part=0):
    """``(language, code)`` of the blocks of one part: 0 the blocks, 1 the recipe parts."""
    text = doc_parts(path)[part]
    return re.findall(r"^```(\w+)\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def commands(bash):
    """Shell commands of a bash block, continuation lines joined."""
    return [shlex.split(line) for line in bash.replace("\\\n", " ").splitlines() if line.strip()]


def parse_train_command(argv):
    """The experiment config a ``python train.py ...`` command line would train."""
    assert argv[:2] == ["python", "train.py"], argv
    args = ["train.py"]
    args += [a if not a.startswith("configs/") else os.path.join(REPO, a) for a in argv[2:]]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=flag_values, lock_config=True, sys_argv=args
    )
    flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
    flag_values(args)
    assert flag_values.workdir
    return flag_values.config


@pytest.fixture
def doc_folder(tmp_path, monkeypatch):
    saved = {kind: dict(blocks) for kind, blocks in registry._REGISTRY.items()}
    saved_ops = dict(augment_ops._REGISTRY)
    saved_norms = dict(norms._NORMS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for kind, blocks in saved.items():
        registry._REGISTRY[kind].clear()
        registry._REGISTRY[kind].update(blocks)
    norms._NORMS.clear()
    norms._NORMS.update(saved_norms)
    norms.resolve_norm.cache_clear()
    calls.import_path.cache_clear()
    augment_ops._REGISTRY.clear()
    augment_ops._REGISTRY.update(saved_ops)
    calls.import_path.cache_clear()
    sys.modules.pop("my_blocks", None)
    sys.modules.pop("my_augment", None)
    sys.modules.pop("my_norms", None)


@pytest.mark.slow
def test_extending_md_runs(doc_folder):
    blocks = code_blocks()
    assert [lang for lang, _ in blocks].count("python") >= 4
    namespace, ran = {"__name__": "extending_md"}, {"train": 0, "sweep": 0}
    for lang, code in blocks:
        match = FILE_LINE.match(code)
        if lang == "python" and match:
            path = doc_folder / match.group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a" if match.group(2) else "w") as f:
                f.write(code[match.end() :] if match.group(2) else code)
        elif lang == "python":
            exec(compile(code, DOC, "exec"), namespace)
        else:
            for argv in commands(code):
                if argv[1] == "train.py":
                    config = parse_train_command(argv)
                    build_model(config.model)
                    check_augmentations(config.data)
                    ran["train"] += 1
                else:
                    run_sweep_command(argv, doc_folder)
                    ran["sweep"] += 1
    assert ran == {"train": 4, "sweep": 1}
    assert "pixel_gate" in registry.attention_names()
    assert "speckle" in augment_ops.op_names()


def run_sweep_command(argv, folder):
    """Runs ``python sweep.py --config F --workdir W`` at tiny sizes; checks the report."""
    assert argv[:2] == ["python", "sweep.py"], argv
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    definition = load_config_file(folder / options["--config"])
    definition.base_config = "configs/test.py"
    definition.overrides.update(
        {"num_epochs": 1, "num_predictions": 1, "model": {"features": (4,)}}
    )
    definition.seeds = (0,)
    workdir = folder / options["--workdir"]
    result = runner.run_sweep(definition, workdir, repo_root=REPO)
    assert sorted(result["trained"]) == ["eca/seed_0", "pixel_gate/seed_0"]
    with open(workdir / "report.md") as f:
        report = f.read()
    # The user's block trained and is in the report, with its parameter count.
    assert re.search(r"\| pixel_gate \|.*\| [\d,]+ \|", report), report[:3000]


def test_attention_zoo_sweep_builds_every_variant():
    path = os.path.join(REPO, "configs", "sweeps", "attention_zoo.py")
    definition = sweeps.parse_sweep(load_config_file(path))
    assert set(definition.variants) == set(registry.attention_names())
    base = load_config_file(definition.base_config, REPO)
    for cell in sweeps.expand_cells(definition, "unused")[:: len(definition.seeds)]:
        config = sweeps.cell_config(definition, base, cell)
        assert (config.data.image_size, config.model.features) == (96, (16, 32, 64, 128))
        blocks = build_model(config.model)._check_fields()
        assert set(blocks["conv"].values()) == {"double_conv"}
        assert set(blocks["attention"].values()) - {"none"} <= {cell.variant}
