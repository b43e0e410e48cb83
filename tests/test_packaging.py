"""The package list of pyproject.toml: every package of bts_jax is installed, configs included."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    found = set()
    for init in (ROOT / "bts_jax").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    for init in (ROOT / "configs").rglob("__init__.py"):
        found.add(".".join(("bts_jax", *init.parent.relative_to(ROOT).parts)))
    return found


def test_every_package_is_listed_in_pyproject():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(setuptools["packages"]) == _packages_on_disk()
    assert setuptools["package-dir"] == {"bts_jax.configs": "configs"}


def test_configs_import_as_bts_jax_configs():
    from bts_jax.configs import quickstart
    from bts_jax.configs.sweeps import paper_ablation

    assert pathlib.Path(quickstart.__file__).parent == ROOT / "configs"
    assert quickstart.get_config().model.features == (16, 32, 64, 128)
    assert paper_ablation.get_config().baseline == "unet"
