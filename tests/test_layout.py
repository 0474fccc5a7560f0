"""The repository layout a newcomer is sent to by the README."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_conf_is_the_shipped_config_tree():
    conf = ROOT / "conf"
    if not conf.exists() and not conf.is_symlink():
        import pytest

        pytest.skip("not a source checkout")
    assert conf.is_symlink(), "conf/ must be a link to src/dyconv/conf"
    assert conf.resolve() == (ROOT / "src" / "dyconv" / "conf").resolve()
    assert (conf / "train.yaml").is_file()
    assert (conf / "model" / "dy_resnet18.yaml").is_file()
