"""Composed configs as plain Python values: the one conversion every module uses."""

from __future__ import annotations

import contextlib
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["plain", "resolved_config", "to_plain"]


def to_plain(node: Any, *, resolve: bool = True) -> Any:
    """A config node as plain Python (dicts, lists, values; interpolations resolved unless
    ``resolve=False``); anything that is not a config is returned as it is."""
    return OmegaConf.to_container(node, resolve=resolve) if OmegaConf.is_config(node) else node


def plain(cfg: DictConfig, *keys: str) -> dict[str, Any]:
    """The named sections of a composed config as plain values (resolved)."""
    return {k: to_plain(cfg.get(k)) for k in keys if k in cfg}


def resolved_config(cfg: DictConfig | Any | None) -> dict[str, Any]:
    """``cfg`` as plain values, interpolations resolved; a top-level key that cannot be resolved
    here (``paths`` outside a Hydra run) is left out. What a tool records beside its outputs."""
    if cfg is None:
        return {}
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    try:
        return to_plain(cfg)  # type: ignore[no-any-return]
    except Exception:  # resolvers that need a Hydra run (paths): keep what resolves
        out: dict[str, Any] = {}
        for key in cfg:
            with contextlib.suppress(Exception):
                out[str(key)] = to_plain(cfg[key])
        return out
