"""Registries: every buildable thing in the project is looked up by its config ``type``.

Each registry lists the modules that register into it (``locations``), so ``REGISTRY.build(cfg)`` works without the
caller importing those modules first.
"""

from mmengine.registry import Registry

MODELS = Registry("models", locations=["diffusion.model"])
METHODS = Registry("methods", locations=["diffusion.methods"])
SCHEDULERS = Registry("schedulers", locations=["diffusion.schedulers"])
DATASETS = Registry("datasets", locations=["diffusion.data"])
SAMPLERS = Registry("data samplers", locations=["diffusion.data"])
CODECS = Registry("codecs", locations=["diffusion.data"])
