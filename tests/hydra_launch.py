"""Launch a shipped config through Hydra's own run/multirun path in this process, with a job that
does nothing: Hydra's callbacks run and Hydra writes its files (``.hydra/*.yaml``) exactly as on
the command line, without a subprocess or any training."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from dyconv.config import CONF_DIR

#: Hydra's logging left as it is (the test process's handlers stay).
NO_LOGGING = ("hydra/hydra_logging=none", "hydra/job_logging=none")


def launch(config_name: str, overrides: Sequence[str], multirun: bool = False) -> tuple[list[str], list[str]]:
    """Run ``config_name`` with ``overrides`` (a multirun with ``multirun=True``); returns the
    output folder of every job and the text of every warning raised meanwhile."""
    folders: list[str] = []

    def job(cfg) -> None:
        folders.append(str(HydraConfig.get().runtime.output_dir))

    GlobalHydra.instance().clear()
    try:
        with warnings.catch_warnings(record=True) as caught, initialize_config_dir(CONF_DIR, version_base="1.3"):
            warnings.simplefilter("always")
            hydra = GlobalHydra.instance().hydra
            args = [*overrides, *NO_LOGGING]
            if multirun:
                hydra.multirun(config_name, job, args, with_log_configuration=False)
            else:
                hydra.run(config_name, job, args, with_log_configuration=False)
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    return folders, [str(w.message) for w in caught]
