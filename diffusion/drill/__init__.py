"""The fault drill (``make drill``, ``tools/fault_drill.py``): the faults a long PixArt-α/δ run meets injected into
real training runs of a tiny config, and the checks that each one is survived and nothing finished is lost.

``runner`` starts and checks the runs (:class:`~diffusion.drill.runner.Drill`), ``scenarios`` holds one function per
fault and :func:`~diffusion.drill.scenarios.run`, ``inject`` is the training child that installs the faults
(``python -m diffusion.drill.inject``), ``probes`` reads run dirs and handles processes and disks.
"""
