"""Trust model: a shared checkpoint or dataset archive can never run code or write outside its place.

- A checkpoint's stored config may only build dyconv's own models, datamodules and tasks; anything
  else (``shutil.copy``, ``builtins.open``, dyconv's own downloader, interpolations) is refused
  before anything is instantiated, for eval/inspect/export and for resume.
- A file that is not a checkpoint is refused in one line, never with advice to relax ``weights_only``.
- Archive extraction cannot write outside its destination on any Python (CVE-2025-4517 included).
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from dyconv.datamodules import ImagenetteDataModule, UnsafeArchiveError
from dyconv.datamodules import download as dl
from dyconv.errors import DyconvError
from dyconv.runs.checkpoint import checkpoint_config, load_checkpoint
from dyconv.runs.rebuild import load_trained_run
from dyconv.runs.safe_config import UnsafeConfigError, check_run_config
from fakedata import md5
from trained import compose_run_config, make_checkpoint

COMMON = {"batch_size": 2, "num_workers": 0, "seed": 0}


# ---------------------------------------------------------------------------------------- item 1: configs
@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("good") / "checkpoints" / "last.ckpt")


def _tampered(good: Path, out: Path, edit) -> Path:
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    edit(ckpt["dyconv"]["config"])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    return out


def _attacks(victim: Path, secret_src: Path) -> dict:
    """name -> (edit of the stored config, the target the error must name)."""
    data_url = "data:text/plain;base64,aW1wb3J0IG9zCg=="
    return {
        "shutil.copy as the model": (
            lambda c: c.__setitem__("model", {"_target_": "shutil.copy", "src": str(secret_src), "dst": str(victim)}),
            "shutil.copy"),
        "builtins.open as the data": (
            lambda c: c.__setitem__("data", {"_target_": "builtins.open", "file": str(victim), "mode": "w"}),
            "builtins.open"),
        "dyconv's own downloader": (
            lambda c: c.__setitem__("data", {"_target_": "dyconv.datamodules.download.download_file",
                                             "urls": [data_url], "dest": str(victim)}),
            "dyconv.datamodules.download.download_file"),
        "nested in a model kwarg": (
            lambda c: c["model"].__setitem__("norm", {"_target_": "shutil.copy", "src": str(secret_src),
                                                      "dst": str(victim)}),
            "shutil.copy"),
        "nested in _args_": (
            lambda c: c["task"].__setitem__("_args_", [{"_target_": "builtins.open", "_args_": [str(victim), "w"]}]),
            "builtins.open"),
        "partial in the task": (
            lambda c: c["task"].__setitem__("lr_mult", {"_target_": "os.system", "_partial_": True}),
            "os.system"),
        "allowed name in the wrong section": (
            lambda c: c.__setitem__("model", {**c["data"], "_target_": c["data"]["_target_"]}),
            "DataModule"),
        "target that is not a string": (
            lambda c: c["model"].__setitem__("_target_", ["shutil.copy"]),
            "shutil.copy"),
        "target in an unused section": (
            lambda c: c.__setitem__("extra", [{"_target_": "builtins.open", "file": str(victim), "mode": "w"}]),
            "builtins.open"),
        "oc.env interpolation": (lambda c: c["data"].__setitem__("root", "${oc.env:HOME}"), "oc.env"),
        "oc.decode building a target": (
            lambda c: c["model"].__setitem__("norm", "${oc.decode:'{_target_: builtins.open, file: x, mode: w}'}"),
            "oc.decode"),
        "_partial_ as a string": (lambda c: c["task"].__setitem__("_partial_", "yes"), "_partial_"),
        "unknown special key": (lambda c: c["model"].__setitem__("_set_", 1), "_set_"),
    }


ATTACKS = list(_attacks(Path("v"), Path("s")))


@pytest.mark.parametrize("attack", ATTACKS)
def test_checkpoint_config_targets_are_allow_listed(attack, good_ckpt, tmp_path, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    victim = tmp_path / "outside" / "victim.pth"
    victim.parent.mkdir()
    edit, named = _attacks(victim, secret)[attack]
    evil = _tampered(good_ckpt, tmp_path / "run" / "checkpoints" / "evil.ckpt", edit)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeConfigError) as e:
        load_trained_run(evil)
    message = str(e.value)
    assert named in message and "\n" not in message and "nothing was instantiated" in message
    assert not victim.exists() and not (tmp_path / "x").exists()
    # the resume path (train calls these two on ckpt_path=...) refuses it the same way
    with pytest.raises(UnsafeConfigError):
        checkpoint_config(load_checkpoint(evil), evil)


def test_cyclic_and_deep_configs_are_refused_not_crashing():
    config = compose_run_config()
    cyclic = copy.deepcopy(config)
    cyclic["model"]["loop"] = cyclic["model"]
    with pytest.raises(UnsafeConfigError, match="cyclic"):
        check_run_config(cyclic)
    deep = copy.deepcopy(config)
    node = deep["data"]
    for _ in range(10_000):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(UnsafeConfigError, match="nested deeper"):
        check_run_config(deep)


def test_every_shipped_group_config_passes_the_check():
    """The allow-list covers what dyconv's own configs store (else training runs could not be evaluated);
    every experiment config is checked where it is composed already (tests/cli/test_experiments.py)."""
    conf = Path(__file__).parents[2] / "src" / "dyconv" / "conf"
    overrides = [[f"optimizer={p.stem}"] for p in sorted((conf / "optimizer").glob("*.yaml"))]
    overrides += [[f"scheduler={p.stem}"] for p in sorted((conf / "scheduler").glob("*.yaml"))]
    overrides += [[f"model={p.stem}"] for p in sorted((conf / "model").glob("*.yaml"))]
    overrides += [["data=mnist"], ["data=imagenette"], ["data=voc_sbd", "model=deeplabv3plus"]]
    for o in overrides:
        config = compose_run_config(o)
        assert check_run_config(config, "x") is config, o


def test_lightning_resume_loader_never_unpickles_code(tmp_path, monkeypatch):
    """What ``trainer.fit(ckpt_path=...)`` uses: weights_only even when the environment says otherwise."""
    from dyconv.runs.checkpoint_io import AtomicCheckpointIO

    victim = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(victim), "w"))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Payload()}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(evil)
    assert not victim.exists()


def test_cli_resume_from_a_tampered_checkpoint_is_refused(cli, good_ckpt, tmp_path):
    victim = tmp_path / "victim.txt"
    evil = _tampered(good_ckpt, tmp_path / "evil" / "evil.ckpt",
                     lambda c: c.__setitem__("model", {"_target_": "builtins.open", "file": str(victim), "mode": "w"}))
    proc = cli("train", f"ckpt_path={evil}", "logger=[]", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "builtins.open" in out and "Traceback" not in out, out[-3000:]
    assert not victim.exists()


# ---------------------------------------------------------------------------------------- item 3: not a checkpoint
def _garbage(kind: str, path: Path, victim: Path) -> Path:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {victim}",))

    if kind == "text":
        path.write_text("model: resnet\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(bytes(range(256)) * 20)
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("a.txt", "hello")
    elif kind == "list":
        torch.save([torch.zeros(1)], path)
    elif kind == "no state_dict":
        torch.save({"weights": torch.zeros(1)}, path)
    elif kind == "state_dict not tensors":
        torch.save({"state_dict": {"a": "b"}}, path)
    elif kind == "bad global_step":
        torch.save({"state_dict": {}, "global_step": "ten"}, path)
    elif kind == "code":
        torch.save({"state_dict": {}, "x": Payload()}, path)
    elif kind == "plain pickle":
        path.write_bytes(pickle.dumps(Payload()))
    return path


GARBAGE = ["text", "empty", "random", "zip", "list", "no state_dict", "state_dict not tensors", "bad global_step",
           "code", "plain pickle"]


@pytest.mark.parametrize("kind", GARBAGE)
def test_a_non_checkpoint_file_is_refused_in_one_line(kind, tmp_path):
    victim = tmp_path / "pwned"
    path = _garbage(kind, tmp_path / "x.ckpt", victim)
    for load in (load_checkpoint, load_trained_run):
        with pytest.raises(DyconvError) as e:
            load(path)
        message = str(e.value)
        assert "is not a dyconv/Lightning checkpoint" in message and "python -m dyconv.train" in message
        assert "\n" not in message and "weights_only" not in message and "Traceback" not in message
    assert not victim.exists()
    if kind == "code":
        assert "system" in str(e.value) and "never holds" in str(e.value)


def test_cli_eval_on_a_non_checkpoint_says_so_without_traceback(cli, tmp_path):
    path = _garbage("text", tmp_path / "notes.ckpt", tmp_path / "x")
    proc = cli("eval", f"ckpt_path={path}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "is not a dyconv/Lightning checkpoint" in out, out[-3000:]
    assert "Traceback" not in out and "weights_only=False" not in out


# ---------------------------------------------------------------------------------------- item 2: archives
def _add(tf: tarfile.TarFile, name: str, *, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make_cve_2025_4517_tar(path: Path, outside: Path, depth_from_dest: int) -> Path:
    """The published technique: a chain of symlinks through long directory names whose real path
    overflows PATH_MAX (so ``os.path.realpath`` stops resolving and the ``data`` filter is fooled),
    an ``escape`` symlink through it to ``outside``, a hard link to a file there, then writes
    through both."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    with tarfile.open(path, "w") as tf:
        prefix = ""
        for step in steps:
            _add(tf, os.path.join(prefix, comp), kind=tarfile.DIRTYPE)
            _add(tf, os.path.join(prefix, step), kind=tarfile.SYMTYPE, link=comp)
            prefix = os.path.join(prefix, comp)
        long_link = os.path.join(*steps, "l" * 254)
        _add(tf, long_link, kind=tarfile.SYMTYPE, link="../" * len(steps))
        up = "../" * depth_from_dest
        _add(tf, "escape", kind=tarfile.SYMTYPE, link=f"{long_link}/{up}{outside.name}")
        _add(tf, "escape/written.pth", data=b"import os\n")
        _add(tf, "victim_link", kind=tarfile.LNKTYPE, link="escape/victim.txt")
        _add(tf, "victim_link", data=b"overwritten\n")
    return path


def _outside_snapshot(outside: Path) -> dict:
    return {p.name: p.read_bytes() for p in outside.iterdir()}


def test_cve_2025_4517_symlink_chain_cannot_write_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("original\n")
    dest = tmp_path / "dest"
    archive = make_cve_2025_4517_tar(tmp_path / "evil.tar", outside, depth_from_dest=1)
    with pytest.raises(UnsafeArchiveError, match=r"member '.*' is a symbolic link"):
        dl.safe_extract(archive, dest)
    assert _outside_snapshot(outside) == {"victim.txt": b"original\n"}
    assert not dest.exists() or not any(dest.iterdir())


def test_cve_2025_4517_via_imagenette_download(tmp_path, monkeypatch):
    root = tmp_path / "data"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("original\n")
    (tmp_path / "arch").mkdir()
    archive = make_cve_2025_4517_tar(tmp_path / "arch" / "imagenette2-320.tgz", outside, depth_from_dest=1)
    evil = dl.Archive(urls=(archive.as_uri(),), filename=archive.name, md5=md5(archive))
    monkeypatch.setattr(ImagenetteDataModule, "ARCHIVES", {**ImagenetteDataModule.ARCHIVES, "320px": evil})
    dm = ImagenetteDataModule(root=root, download=True, image_size=16, num_classes=3, **COMMON)
    with pytest.raises(UnsafeArchiveError):
        dm.prepare_data()
    assert _outside_snapshot(outside) == {"victim.txt": b"original\n"}
    assert not dl.is_complete(root / "imagenette2-320")


LINKS = {
    "symlink to an absolute path": ("evil", tarfile.SYMTYPE, "/etc/passwd"),
    "symlink to ../": ("evil", tarfile.SYMTYPE, "../outside"),
    "symlink inside the tree": ("a/evil", tarfile.SYMTYPE, "b"),
    "hard link to ../": ("evil", tarfile.LNKTYPE, "../outside/victim.txt"),
    "hard link to an absolute path": ("evil", tarfile.LNKTYPE, "{outside}/victim.txt"),
    "fifo": ("evil", tarfile.FIFOTYPE, ""),
    "char device": ("evil", tarfile.CHRTYPE, ""),
}


@pytest.mark.parametrize("case", list(LINKS))
def test_links_and_special_files_refuse_the_whole_archive(case, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("original\n")
    name, kind, link = LINKS[case]
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        _add(tf, "a/b", data=b"fine")
        _add(tf, name, kind=kind, link=link.format(outside=outside))
        _add(tf, "evil", data=b"overwritten\n")
        _add(tf, "evil/x", data=b"through\n")
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=f"member '{name}'"):
        dl.safe_extract(archive, dest)
    assert _outside_snapshot(outside) == {"victim.txt": b"original\n"}
    assert not (dest / "a").exists()  # checked before anything is written


def test_zip_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("tiny/evil")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        dl.safe_extract(archive, tmp_path / "dest")


@pytest.mark.parametrize("suffix", [".tar", ".zip"])
def test_an_existing_link_under_the_destination_is_never_followed(suffix, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    archive = tmp_path / f"a{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("sub/x.pth", "import os\n")
    else:
        with tarfile.open(archive, "w") as tf:
            _add(tf, "sub/x.pth", data=b"import os\n")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        dl.safe_extract(archive, dest)
    assert not any(outside.iterdir())


@pytest.mark.parametrize("suffix", [".tgz", ".zip"])
def test_member_count_and_total_size_limits(suffix, tmp_path):
    archive = tmp_path / f"a{suffix}"
    members = {f"d/f{i}.txt": b"x" * 100 for i in range(5)}
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for n, d in members.items():
                zf.writestr(n, d)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for n, d in members.items():
                _add(tf, n, data=d)
    with pytest.raises(UnsafeArchiveError, match="more than 4 members"):
        dl.safe_extract(archive, tmp_path / "a", max_members=4)
    with pytest.raises(UnsafeArchiveError, match="more than 499 bytes"):
        dl.safe_extract(archive, tmp_path / "b", max_total_size=499)
    assert not (tmp_path / "a" / "d").exists() and not (tmp_path / "b" / "d").exists()
    dl.safe_extract(archive, tmp_path / "c", max_members=5, max_total_size=500)  # at the limits: fine
    assert {p.name: p.read_bytes() for p in (tmp_path / "c" / "d").iterdir()} == {n[2:]: d for n, d in members.items()}
    assert dl.MAX_TOTAL_SIZE > 150 * 1000**3 and dl.MAX_MEMBERS > 1_300_000  # ImageNet fits


def test_backslash_and_dot_member_names(tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        _add(tf, "./ok/./a.txt", data=b"a")
        _add(tf, "ok\\..\\..\\evil.txt", data=b"evil")
    with pytest.raises(UnsafeArchiveError, match=r"'\.\.' component"):
        dl.safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "dest" / "ok").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="file modes")
def test_extracted_files_have_plain_modes(tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("s/x")
        info.size, info.mode = 1, 0o6777
        tf.addfile(info, io.BytesIO(b"x"))
    dl.safe_extract(archive, tmp_path / "dest")
    out = tmp_path / "dest" / "s" / "x"
    assert not out.stat().st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH) and out.read_bytes() == b"x"


def test_a_checkpoint_never_turns_on_downloads(tmp_path):
    """A stored data config with download=true is rebuilt with downloads off; only the command
    line (an override) can turn them on."""
    from dyconv.runs.rebuild import load_trained_run
    from trained import make_checkpoint

    target = tmp_path / "victim"
    ckpt = make_checkpoint(tmp_path / "run.ckpt", ["data=mnist", f"data.root={target}", "data.download=true",
                                                   "model=simple_cnn"])
    run = load_trained_run(ckpt)
    assert run.config["data"]["download"] is True
    dm = run.datamodule()
    assert dm.download is False and dm.root == target
    assert run.datamodule({"download": True}).download is True
    assert not target.exists()


# ---------------------------------------------------------------------------------------- file names in callback states
def test_checkpoint_io_deletes_only_ckpt_files_in_its_folders(tmp_path):
    """Lightning's default removal takes any path and protocol, recursively."""
    from dyconv.runs.checkpoint_io import AtomicCheckpointIO

    ckpts, elsewhere = tmp_path / "run" / "checkpoints", tmp_path / "home"
    ckpts.mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "thesis.tex").write_text("years of work")
    (elsewhere / "other.ckpt").write_bytes(b"x")
    (ckpts / "sub.ckpt").mkdir()
    (ckpts / "notes.txt").write_text("keep")
    (ckpts / "epoch_000.ckpt").write_bytes(b"x")
    (ckpts / "epoch_001.ckpt").write_bytes(b"x")
    io_ = AtomicCheckpointIO(checkpoint_dirs=[ckpts])
    for path in (f"local://{elsewhere}", str(elsewhere), str(elsewhere / "other.ckpt"),
                 str(ckpts / ".." / ".." / "home" / "other.ckpt"), f"memory://{elsewhere}", str(ckpts / "notes.txt"),
                 str(ckpts / "sub.ckpt")):
        io_.remove_checkpoint(path)
    assert (elsewhere / "thesis.tex").is_file() and (elsewhere / "other.ckpt").is_file()
    assert (ckpts / "notes.txt").is_file() and (ckpts / "sub.ckpt").is_dir()
    io_.remove_checkpoint(str(ckpts / "epoch_000.ckpt"))
    io_.remove_checkpoint(f"file://{ckpts / 'epoch_001.ckpt'}")
    assert not (ckpts / "epoch_000.ckpt").exists() and not (ckpts / "epoch_001.ckpt").exists()


def test_cli_resume_ignores_file_names_a_handed_checkpoint_holds(cli, tmp_path, tmp_path_factory):
    """A checkpoint's ModelCheckpoint states name the best/last/k-th best files; Lightning
    restores them, tests the "best" one and deletes superseded ones. Names outside this run's
    checkpoint folder are dropped: a resume from a handed file deletes nothing of the user's."""
    from trained import real_run

    good = real_run(tmp_path_factory.getbasetemp()) / "checkpoints" / "last.ckpt"
    home = tmp_path / "home"
    (home / "important").mkdir(parents=True)
    (home / "important" / "thesis.tex").write_text("years of work")
    other = tmp_path / "models"
    other.mkdir()
    for name in ("kth.ckpt", "topk.ckpt", "last.ckpt"):
        (other / name).write_bytes(b"someone else's checkpoint")
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    patched = 0
    for state in ckpt["callbacks"].values():
        if "best_model_path" in state:
            state.pop("dirpath", None)  # restored as if it were this run's folder
            state["best_model_path"] = f"local://{home}"
            state["last_model_path"] = str(other / "last.ckpt")
            if state.get("monitor"):  # a worse "k-th best" that the next better epoch replaces
                state["best_k_models"] = {str(other / "kth.ckpt"): torch.tensor(-1.0)}
                state["kth_best_model_path"] = str(other / "kth.ckpt")
                state["kth_value"] = torch.tensor(-1.0)
            patched += 1
    assert patched == 2  # the best-model and the last-checkpoint callbacks
    evil = tmp_path / "handed.ckpt"
    torch.save(ckpt, evil)
    proc = cli("train", "data.splits=[256,64,64]", "trainer.max_epochs=3", "callbacks.progress_bar=null", "logger=[]",
               f"hydra.run.dir={tmp_path / 'resumed'}", f"ckpt_path={evil}")
    out = proc.stdout + proc.stderr
    assert (home / "important" / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in other.iterdir()) == ["kth.ckpt", "last.ckpt", "topk.ckpt"]
    assert "Ignoring checkpoint file names outside" in out, out[-3000:]
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").is_file()


def test_a_link_planted_in_a_run_folder_is_replaced_not_written_through(tmp_path):
    """A resumed (handed) run folder whose .hydra/resolved_config.yaml links to a user's file:
    the launch replaces the link, the file keeps its content."""
    from omegaconf import OmegaConf

    from dyconv.runs.launch import prepare_run_dir

    victim = tmp_path / "dotfile"
    victim.write_text("precious")
    run = tmp_path / "handed"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "resolved_config.yaml").symlink_to(victim)
    prepare_run_dir(run, OmegaConf.create({"seed": 1}))
    assert victim.read_text() == "precious"
    written = run / ".hydra" / "resolved_config.yaml"
    assert not written.is_symlink() and "seed: 1" in written.read_text()


def test_a_checkpoint_never_makes_the_tools_fetch_pretrained_weights(tmp_path, monkeypatch):
    """The weights come from the checkpoint: a stored pretrained_backbone=true is not obeyed."""
    from torchvision.models import MobileNet_V2_Weights

    def no_fetch(*args, **kwargs):
        raise AssertionError("tried to download pretrained weights")

    monkeypatch.setattr(MobileNet_V2_Weights.IMAGENET1K_V1.__class__, "get_state_dict", no_fetch)
    ckpt = make_checkpoint(tmp_path / "seg.ckpt", ["data=voc", "model=deeplabv3plus"])
    ckpt_data = torch.load(ckpt, map_location="cpu", weights_only=True)
    for value in (True, 1, "yes"):  # whatever the model reads as true
        ckpt_data["dyconv"]["config"]["model"]["pretrained_backbone"] = value
        torch.save(ckpt_data, ckpt)
        run = load_trained_run(ckpt)
        assert run.config["model"]["pretrained_backbone"] == value  # recorded as stored, not acted on
    # Nested under another key of the model config: still not obeyed (the model refuses the key).
    ckpt_data["dyconv"]["config"]["model"]["pretrained_backbone"] = False
    ckpt_data["dyconv"]["config"]["model"]["extra"] = {"_target_": "dyconv.models.create_model",
                                                      "name": "deeplabv3plus", "pretrained_backbone": True}
    torch.save(ckpt_data, ckpt)
    with pytest.raises(Exception, match="extra"):
        load_trained_run(ckpt)


def test_a_checkpoint_never_makes_the_tools_unpack_data_into_its_root(tmp_path):
    """FashionMNIST unpacks a local copy (system_dir) into its root: a checkpoint's stored root
    and system_dir rebuild with system_dir unset, so nothing is written where it says."""
    target = tmp_path / "somewhere" / "chosen"
    system = tmp_path / "system"
    system.mkdir()
    ckpt = make_checkpoint(tmp_path / "run.ckpt", ["data=fashion_mnist", "model=simple_cnn"])
    ckpt_data = torch.load(ckpt, map_location="cpu", weights_only=True)
    ckpt_data["dyconv"]["config"]["data"].update(root=str(target), system_dir=str(system), download=False)
    torch.save(ckpt_data, ckpt)
    run = load_trained_run(ckpt)
    dm = run.datamodule()
    assert dm.system_dir is None and dm.download is False
    with pytest.raises(DyconvError, match=r"pass data\.system_dir=/usr/share/datasets/fashion-mnist: it is unset here"):
        dm.prepare_data()
    assert not target.exists()
    assert run.datamodule({"system_dir": str(system)}).system_dir == system  # the command line may


def test_restoring_launch_files_never_copies_a_links_target(tmp_path):
    """A handed run's recorded launch whose config.yaml is a link to a user's file: the relaunch
    that does not run restores nothing from it (the file's content never enters the run)."""
    from dyconv.runs.launch import restore_launch_files

    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    run = tmp_path / "handed"
    launch = run / ".hydra" / "launches" / "2099-01-01_00-00-00"
    launch.mkdir(parents=True)
    (launch / "config.yaml").symlink_to(secret)
    (launch / "overrides.yaml").write_text("- seed=1\n")
    (run / ".hydra" / "config.yaml").write_text("this launch's\n")
    assert restore_launch_files(run)
    assert (run / ".hydra" / "config.yaml").read_text() == "this launch's\n"
    assert (run / ".hydra" / "overrides.yaml").read_text() == "- seed=1\n"
    linked = tmp_path / "linked"
    (linked / ".hydra").mkdir(parents=True)
    (linked / ".hydra" / "launches").symlink_to(launch.parent)
    assert not restore_launch_files(linked)


def test_links_planted_where_hydra_writes_are_removed_before_a_launch(cli, tmp_path):
    """A handed run folder with links where Hydra writes a launch's files (export's .hydra/*.yaml
    and export.log, and <run>/export itself): the export writes real files into the run and every
    link target keeps its content."""
    run = tmp_path / "handed"
    ckpt = make_checkpoint(run / "checkpoints" / "last.ckpt", ["model=simple_cnn", "data=mnist"])
    home = tmp_path / "home"
    home.mkdir()
    victims = []
    for rel in ("export/.hydra/config.yaml", "export/.hydra/overrides.yaml", "export/export.log"):
        victim = home / rel.replace("/", "_")
        victim.write_text("precious")
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).symlink_to(victim)
        victims.append(victim)
    cli("export", f"ckpt_path={ckpt}", "format=torchscript", "verify=false")
    assert [v.read_text() for v in victims] == ["precious"] * 3
    assert not (run / "export" / "export.log").is_symlink() and (run / "export" / "model.ts").is_file()

    other = tmp_path / "handed2"
    ckpt2 = make_checkpoint(other / "checkpoints" / "last.ckpt", ["model=simple_cnn", "data=mnist"])
    projects = home / "Projects"
    projects.mkdir()
    (other / "export").symlink_to(projects)
    cli("export", f"ckpt_path={ckpt2}", "format=torchscript", "verify=false")
    assert not any(projects.iterdir()) and (other / "export" / "model.ts").is_file()
