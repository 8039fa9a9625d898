"""Registries: every buildable thing in the project is looked up by its config ``type``.

Each registry lists the modules that register into it (``locations``), so ``REGISTRY.build(cfg)`` works without the
caller importing those modules first. The ``model``, ``method``, ``data`` and ``data_sampler`` sections are checked
against the constructor before it is called: a misspelt key is a ``KeyError`` naming the section, the key and the
known keys (not a ``TypeError`` from inside ``__init__``), for the trainer and every tool alike. Keys that moved to
another section (``MOVED_KEYS``) are still accepted where they were and handed to their new home.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from mmengine.registry import Registry, build_from_cfg

# section -> {old key: its new "section.key"}: T and the betas used to be method keys (two names for T); they are the
# top-level ``diffusion`` section now (diffusion.schedulers.process), read from the old place with a FutureWarning.
MOVED_KEYS = {
    "method": {
        "num_steps": "diffusion.num_train_timesteps",  # DiffusionLoss
        "num_train_steps": "diffusion.num_train_timesteps",  # LCMDistillation
        "beta_start": "diffusion.beta_start",
        "beta_end": "diffusion.beta_end",
    }
}


def accepted_keys(obj: Callable) -> tuple[set[str], set[str]] | None:
    """(keyword arguments ``obj`` accepts, those without a default), or None when it takes any (``**kwargs`` that
    cannot be followed). ``**kwargs`` is followed through a class's bases and a factory's return annotation."""
    if inspect.isclass(obj):
        names, defaulted, required = set(), set(), set()
        for cls in obj.__mro__:
            if "__init__" not in vars(cls) or cls is object:
                continue
            params = list(inspect.signature(cls.__init__).parameters.values())[1:]
            named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            names |= {p.name for p in named}
            defaulted |= {p.name for p in named if p.default is not p.empty}
            required |= {p.name for p in named if p.default is p.empty}
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                return names, required - defaulted
        return None
    try:
        sig = inspect.signature(obj, eval_str=True)
    except (NameError, TypeError, ValueError):
        return None
    named = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    names, required = {p.name for p in named}, {p.name for p in named if p.default is p.empty}
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        inner = accepted_keys(sig.return_annotation) if inspect.isclass(sig.return_annotation) else None
        if inner is None:
            return None
        names |= inner[0]  # a factory fills the class's required arguments itself
    return names, required


def check_keys(registry: Registry, values: Mapping[str, Any], section: str, check_missing: bool = True) -> None:
    """Raise ``KeyError`` when config section ``section`` (built by ``registry`` from its ``type``) has a key its
    constructor does not take or (``check_missing``) lacks one it requires; an unknown ``type`` is left to the build.
    """
    obj_type = values.get("type")
    obj = registry.get(obj_type) if isinstance(obj_type, str) else obj_type
    accepted = accepted_keys(obj) if callable(obj) else None
    if accepted is None:
        return
    known, required = accepted
    moved = MOVED_KEYS.get(section, {}).keys() | _moved_weight_keys(section)
    unknown = sorted(values.keys() - known - {"type"} - moved)
    if unknown:
        raise KeyError(f"unknown key(s) {unknown} in config section '{section}' ({obj_type}); known: {sorted(known)}")
    missing = sorted(required - values.keys())
    if check_missing and missing:
        raise KeyError(f"missing required key(s) {missing} in config section '{section}' ({obj_type})")


def _moved_weight_keys(section: str) -> set[str]:
    """The keys of ``section`` that older configs named weights with (now the ``weights`` section)."""
    from diffusion.config import MOVED_WEIGHT_KEYS  # lazy: a leaf module, kept out of the registry's import

    return {old.split(".", 1)[1] for old in MOVED_WEIGHT_KEYS if old.startswith(f"{section}.")}


def _checked_build(section: str) -> Callable:
    def build(cfg: Mapping, registry: Registry, default_args: Mapping | None = None) -> Any:
        check_keys(registry, {**(default_args or {}), **cfg}, section)
        return build_from_cfg(cfg, registry, default_args)

    return build


def _build_method(cfg: Mapping, registry: Registry, default_args: Mapping | None = None) -> Any:
    """``_checked_build("method")`` that also reads the schedule keys of older method sections into ``schedule``
    (diffusion.build.build_method passes the config's schedule and no old keys)."""
    values = {**(default_args or {}), **cfg}
    check_keys(registry, values, "method")
    moved = {k: values.pop(k) for k in list(values) if k in MOVED_KEYS["method"]}
    if moved:
        from diffusion.schedulers.noise_schedule import NoiseSchedule  # lazy: the schedulers import this module
        from diffusion.schedulers.process import moved_schedule_keys

        schedule = NoiseSchedule(**moved_schedule_keys(moved))
        if values.get("schedule") is not None and values["schedule"] != schedule:
            raise ValueError(f"method keys {sorted(moved)} disagree with the schedule passed as method.schedule")
        values["schedule"] = schedule
    return build_from_cfg(values, registry)


MODELS = Registry("models", build_func=_checked_build("model"), locations=["diffusion.model"])
METHODS = Registry("methods", build_func=_build_method, locations=["diffusion.methods"])
SCHEDULERS = Registry("schedulers", locations=["diffusion.schedulers"])
DATASETS = Registry("datasets", build_func=_checked_build("data"), locations=["diffusion.data"])
# the ``data_sampler`` section's batch samplers (diffusion.pipeline.SAMPLERS names the diffusion samplers)
DATA_SAMPLERS = Registry("data samplers", build_func=_checked_build("data_sampler"), locations=["diffusion.data"])
CODECS = Registry("codecs", locations=["diffusion.data"])
