"""The paper's experiments at small scale, and the committed assets they start from: what the reproduction commands
(``tools/reproduce_*.py``, ``tools/sweep_lcm.py``, ``tools/demo.py``, ``tools/make_*.py``) run, as functions.

``assets``: the tiny teacher, LCM student and ControlNet of the embedded default, trained and published with their
config hashes. ``lcm_quality``: LCM student vs teacher (PixArt-δ Table 2 / Fig. 7). ``lcm_sweep``: guidance in the
distillation (Fig. 2). ``controlnet_ablation`` / ``controlnet_eval``: the ControlNet-Transformer ablation rows and
their evaluation (§4). ``tables``: every README table rebuilt, stamped. ``demo``: ``make demo``.
"""
