"""The repository layout a newcomer is sent to by the README."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_top_level_conf_is_the_shipped_config_tree():
    conf = ROOT / "conf"
    if not conf.exists() and not conf.is_symlink():
        import pytest

        pytest.skip("not a source checkout")
    assert conf.is_symlink(), "conf/ must be a link to src/dyconv/conf"
    assert conf.resolve() == (ROOT / "src" / "dyconv" / "conf").resolve()
    assert (conf / "train.yaml").is_file()
    assert (conf / "model" / "dy_resnet18.yaml").is_file()


def test_no_import_cycle_outside_the_layer_package():
    """Each concept has one home: no module of dyconv imports (at any depth, function-local
    imports included) a module that imports it back. ``dyconv.layers`` is checked by its own
    contract."""
    import grimp

    graph = grimp.build_graph("dyconv", include_external_packages=False)
    modules = sorted(m for m in graph.modules if not m.startswith("dyconv.layers"))
    cycles = []
    for m in modules:
        for imported in graph.find_modules_directly_imported_by(m):
            if imported.startswith("dyconv.layers") or imported == m:
                continue
            if graph.chain_exists(importer=imported, imported=m):
                cycles.append((m, imported))
    assert cycles == []


def test_the_train_entry_point_loads_neither_torch_nor_lightning():
    """``python -m dyconv.train --help`` (or ``--cfg``) stays fast: the training library loads
    when a job runs."""
    import subprocess
    import sys

    code = "import sys, dyconv.train; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
