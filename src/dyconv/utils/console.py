"""A quiet console for dyconv's command-line tools: Lightning's messages once, through Hydra's
handlers (:func:`route_lightning_logs`), and no noise a user cannot act on (:func:`quiet_console`).

Lightning prints advertisements for its cloud products (litlogger / litmodels tips) on every run,
and some dependencies emit deprecation warnings about *their own* internals that a user cannot act
on. :func:`quiet_console` hides exactly those, by message, for the current process only; it is
called by the entry points' ``main()`` and never on import, so library users keep every warning.
"""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["CHATTY_LOGGERS", "KNOWN_NOISE", "TIP_LOGGERS", "quiet_console", "route_lightning_logs"]

# (message regex, category) pairs: third-party deprecations that are not about dyconv's code.
KNOWN_NOISE: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning's pytree helper builds torch's deprecated LeafSpec (torch >= 2.10).
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # TorchScript is deprecated upstream; dyconv's export keeps it as one of several formats.
    (r"`torch\.jit\.(script|trace|save|load)` is deprecated", FutureWarning),
    (r"`torch\.jit\.(script|trace|save|load)` is deprecated", DeprecationWarning),
    # MLflow 3 deprecates the file store that `logger=mlflow` uses so runs stay inside the run dir.
    (r".*[Ff]ilesystem tracking backend.*deprecated", FutureWarning),
    # wandb / mlflow / protobuf internals.
    (r".*pkg_resources is deprecated", UserWarning),
    (r".*Type google\._upb\._message\.\w+ uses PyType_Spec", DeprecationWarning),
)

# Loggers Lightning's rank_zero_info writes its "💡 Tip: ... litlogger / litmodels" lines to.
TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# Loggers that narrate their own start-up at INFO (alembic lists its plugins when optuna imports it;
# MLflow announces creating and updating its SQLite store's tables).
CHATTY_LOGGERS = ("alembic", "mlflow.store.db.utils")
_TIP = re.compile(r"Tip:.*(litlogger|litmodels|Lightning (Experiments|model registry))", re.DOTALL)


class _DropLightningTips(logging.Filter):
    """Drop Lightning's product tips (litlogger, litmodels); keep every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _TIP.search(str(record.msg))


def quiet_console() -> None:
    """Silence Lightning's litlogger/litmodels tips and :data:`KNOWN_NOISE` in this process.

    Idempotent. Everything else (Lightning's own advice, dyconv's warnings) still prints.
    """
    for pattern, category in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name in TIP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in logger.filters):
            logger.addFilter(_DropLightningTips())
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def route_lightning_logs() -> None:
    """Lightning adds its own console handler; drop it so its messages go through Hydra's
    handlers once (console + the run's log file) instead of twice. Lightning is imported first:
    imported later (by a tool that loads it only when it rebuilds a checkpoint), it would add
    its handler again."""
    import lightning  # noqa: F401  (lazy: the entry points' --help stays fast)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True
