"""``python -m dyconv.profile``: argument parsing and one tiny end-to-end run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dyconv.profile import format_table, parse_args


def test_parse_args():
    opts = parse_args(["models=resnet10,dy_resnet10", "batch=4", "rounds=2", "threads=1", "--no-tune-malloc"])
    assert opts["models"] == ["resnet10", "dy_resnet10"]
    assert (opts["batch"], opts["rounds"], opts["threads"], opts["tune_malloc"]) == (4, 2, 1, False)
    assert parse_args(["tune_malloc=false"])["tune_malloc"] is False
    assert parse_args([])["tune_malloc"] is True
    assert parse_args(["models=[mobilenetv2]", "dtype=bf16"])["models"] == ["mobilenetv2"]
    for bad in (["batch"], ["colour=red"], ["batch=0"], ["device=tpu"], ["stat=mean"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_format_table_ratios():
    row = {
        "family": "m",
        "input": "3x8x8",
        "batch": 2,
        "m": {"params": 1e6, "flops": 2e9, "latency_ms": 2.0, "train_ms": 10.0},
        "dy_m": {"params": 4e6, "flops": 3e9, "latency_ms": 3.0, "train_ms": 15.0},
    }
    line = format_table([row]).splitlines()[-1]
    assert line.startswith("| m / dy_m | 3x8x8 | 1.00 / 4.00 | 4.00x | 2.000 / 3.000 | 1.50x | 2.0 / 3.0 | 1.50x | 2 |")


def test_profile_cli_runs_without_lightning(tmp_path):
    out = tmp_path / "profile.md"
    code = (
        "import sys; from dyconv.profile import main; "
        f"main(['models=simple_cnn,dy_simple_cnn', 'rounds=1', 'batch=2', 'out={out}']); "
        "assert 'lightning' not in sys.modules, 'profile imported lightning'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "malloc tuning: on" in res.stdout
    assert "| simple_cnn / dy_simple_cnn | 1x28x28" in res.stdout
    text = out.read_text()
    assert "python -m dyconv.profile models=simple_cnn,dy_simple_cnn rounds=1 batch=2" in text
    assert "| simple_cnn / dy_simple_cnn |" in text


def test_profile_module_entry_point():
    res = subprocess.run(
        [sys.executable, "-m", "dyconv.profile", "models=dy_simple_cnn", "rounds=1", "batch=2", "--no-tune-malloc"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "malloc tuning: off" in res.stdout
    assert "simple_cnn / dy_simple_cnn" in res.stdout  # a dynamic name brings its static twin


def test_odconv_models_pair_with_their_static_twin():
    from dyconv.profiling import _pairs

    pairs = _pairs(["od_resnet18", "resnet18", "dy_mobilenetv2", "od_mobilenetv2"])
    assert ("resnet18", ["resnet18", "od_resnet18"]) in pairs and ("resnet18", ["resnet18", "dy_resnet18"]) in pairs
    assert ("mobilenetv2", ["mobilenetv2", "od_mobilenetv2"]) in pairs and len(pairs) == 4
    row = {"family": "m", "members": ["m", "od_m"], "input": "3x8x8", "batch": 2, "note": "",
           "m": {"params": 1e6, "flops": 2e9, "latency_ms": 2.0, "train_ms": 10.0},
           "od_m": {"params": 2e6, "flops": 3e9, "latency_ms": 3.0, "train_ms": 15.0}}
    assert "| m / od_m | 3x8x8 | 1.00 / 2.00 | 2.00x |" in format_table([row])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models="], "models is empty"),
        (["models=[]"], "models is empty"),
        (["models=nonexistent"], "unknown model 'nonexistent'"),
        (["tune_malloc=maybe"], "tune_malloc: expected a boolean, got 'maybe'"),
        (["threads=true"], "threads must be an integer >= 1, got True"),
    ],
)
def test_parse_args_refuses_bad_options_in_one_line(args, message):
    with pytest.raises(SystemExit) as exc:
        parse_args(args)
    text = str(exc.value.code)
    assert text.startswith("dyconv.profile: ") and message in text and "\n" not in text


def test_profile_refuses_an_input_size_a_model_cannot_take_in_one_line(capsys):
    from dyconv.profile import main

    with pytest.raises(SystemExit) as exc:
        main(["models=simple_cnn", "size=1", "rounds=1", "batch=2", "--no-tune-malloc"])
    text = str(exc.value.code)
    assert text.startswith("dyconv.profile: simple_cnn cannot take a 1x1x1 input (size=1)") and "\n" not in text


def test_profile_checks_out_before_any_work_and_writes_it_atomically(tmp_path, capsys, monkeypatch):
    from dyconv import profile

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        profile.main(["models=simple_cnn", "rounds=1", "batch=2", "--no-tune-malloc", f"out={blocker}/sub/p.md"])
    assert f"{blocker} is a file, not a folder" in str(exc.value.code)
    assert "building" not in capsys.readouterr().err  # refused before profiling anything

    written = []
    import dyconv.utils.files as files

    real = files.atomic_write_text
    monkeypatch.setattr(files, "atomic_write_text", lambda p, t: written.append(p) or real(p, t))
    out = tmp_path / "p.md"
    out.write_text("old")
    profile.main(["models=simple_cnn", "rounds=1", "batch=2", "--no-tune-malloc", f"out={out}"])
    assert written == [str(out)] and "| simple_cnn / dy_simple_cnn |" in out.read_text()


def test_every_registered_model_has_an_input_it_takes_and_1d_models_profile():
    """Profiling without models= covers every family: each has a natural input (MNIST-1D's 1x40 for
    the 1-D CNN, not the 3x224x224 fallback), and a sub-MFLOP model's GFLOPs are not printed as 0."""
    from dyconv.models import list_models
    from dyconv.profiling import NATURAL_INPUTS, _pairs, profile_models

    families = {family for family, _ in _pairs(list_models())}
    assert "cnn1d" in families and "cnn1d" in NATURAL_INPUTS
    (row,) = profile_models(["dy_cnn1d"], rounds=1, batch=2)
    assert row["input"] == "1x40" and row["members"] == ["cnn1d", "dy_cnn1d"]
    # Hand-computed: conv1 1->25 (k5, length 40->20) is 2*25*5*20 = 5,000 FLOPs, the model < 1 MFLOP.
    assert 5_000 < row["cnn1d"]["flops"] < 1_000_000
    line = format_table([row]).splitlines()[-1]
    assert " 0.000 / 0.000 " not in line and "e-0" in line
