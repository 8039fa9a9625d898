"""One diffusion process per config (PixArt-delta §3.1): the schedule (the ``diffusion`` section: T, betas) and an LCM
student's settings (``method``: num_ddim_steps, timestep_scaling, sigma_data) reach the method, every pipeline
(``load_pipeline``, also with ``like=``; the trainer's sample grids) and the exporter from one reader, so a checkpoint
is sampled with the consistency function its config trained. Trains nothing: a closed-form stub denoiser is sampled
and the expected latents are computed from the *method's* own objects (its schedule, DDIM grid and consistency
function), or by hand for one step."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from torch import nn

from diffusion.build import build_method, load_pipeline
from diffusion.data import ensure_tiny_text_encoder
from diffusion.pipeline import SamplerConfig
from diffusion.schedulers import DiffusionProcess

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PROMPTS = ["a large red circle at the top left on a gray background", "a small blue square in the center"]
# one change of each setting; values far enough from PixArt-delta's that the boundary scalings move at t >= 279
SETTINGS = {
    "default": {},
    "T": dict(diffusion=dict(num_train_timesteps=500)),
    "betas": dict(diffusion=dict(beta_end=0.012)),
    "scaled_linear": dict(diffusion=dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),
    "num_ddim_steps": dict(method=dict(num_ddim_steps=25)),
    "timestep_scaling": dict(method=dict(timestep_scaling=0.005)),
    "sigma_data": dict(method=dict(sigma_data=200.0)),
}


class Stub(nn.Module):
    """A denoiser with the PixArt call signature whose eps is closed-form in (x, t, y); it has the learned null
    caption the LCM method copies for its teacher."""

    in_channels, patch_size = 12, 2

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.3))
        self.y_embedder = nn.Module()
        self.y_embedder.register_buffer("y_embedding", torch.zeros(13, 64))

    def forward(self, x, t, y, mask=None, data_info=None):
        return torch.tanh(self.scale * x + t.to(x.dtype).view(-1, 1, 1, 1) / 1000 + 0.1 * y.mean())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    cfg = Config.fromfile(str(CONFIGS / "lcm/tiny_lcm.py"))
    cfg.text_encoder.path = str(ensure_tiny_text_encoder(tmp_path_factory.mktemp("process") / "t5"))
    return cfg


@pytest.fixture(scope="module")
def default_pipe(base):
    return load_pipeline(base, model=Stub().eval())


def variant(base: Config, name: str) -> Config:
    cfg = Config(base.to_dict())
    for section, values in SETTINGS[name].items():
        cfg[section] = {**(cfg.get(section) or {}), **values}
    return cfg


def expected_lcm(method, pipe, steps: int, seed: int) -> torch.Tensor:
    """The multistep LCM sampler (Luo et al. 2023, Algorithm 1 of multistep sampling) written with the method's own
    pieces: its DDIM grid (official PixArt spacing origin[::-(N // n)][:n]), its consistency function
    f = c_skip x + c_out x0 and its schedule's alphas, in float64, with the pipeline's seeding (x_T, then the noise
    of each re-noising, from one CPU generator)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(PROMPTS), 12, 16, 16, generator=generator).double()
    y, mask = pipe.encode(PROMPTS)
    origin = method.solver.ddim_timesteps.flip(0)
    timesteps = origin[:: method.lcm.num_ddim_steps // steps][:steps].tolist()
    ac = method.schedule.alphas_cumprod
    for i, t in enumerate(timesteps):
        tt = torch.full((len(PROMPTS),), t)
        eps = pipe.model(x.float(), tt, y, mask).double()
        denoised = method._f(x, tt, eps)
        if i == len(timesteps) - 1:
            return denoised
        noise = torch.randn(x.shape, generator=generator).double()
        x = ac[timesteps[i + 1]].sqrt() * denoised + (1 - ac[timesteps[i + 1]]).sqrt() * noise
    raise AssertionError("no steps")


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a.double() - b.double()).abs().max() <= 1e-5 * b.abs().max()).item())


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("steps", [2, 4])
def test_lcm_sampling_follows_each_setting_exactly_as_the_method(base, default_pipe, name, steps):
    cfg = variant(base, name)
    pipe = load_pipeline(cfg, model=Stub().eval(), like=default_pipe)  # like=: the other config's pipeline
    method = build_method(cfg, Stub())
    assert pipe.process == method.process == DiffusionProcess.from_config(cfg)
    z = pipe.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=steps), seed=3)
    want = expected_lcm(method, pipe, steps, seed=3)
    assert close(z, want), (z.double() - want).abs().max()
    if name == "default":  # PixArt-delta's process: what the pipeline always used before (a default Pipeline)
        assert method.process == DiffusionProcess() and torch.equal(z, sampled_without_a_process(pipe, steps))
    elif not (name == "num_ddim_steps" and steps == 4):  # 25 // 4 x 40 = 50 // 4 x 20: the same four timesteps
        default = default_pipe.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=steps), seed=3)
        assert not close(z, default)  # the setting changes the samples


def sampled_without_a_process(pipe, steps: int) -> torch.Tensor:
    from diffusion.pipeline import Pipeline

    plain = Pipeline(pipe.model, pipe.text_encoder, pipe.codec, pipe.resolution)
    return plain.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=steps), seed=3)


def test_one_step_by_hand_under_a_changed_process(base, default_pipe):
    """T = 500, beta_end = 0.012, N = 25, timestep_scaling = 0.005, sigma_data = 200, from numbers alone: the one LCM
    step is f(x_T, t) = c_skip x_T + c_out x0 at t = k N - 1 = 499 (k = 500 // 25 = 20)."""
    cfg = variant(base, "default")
    cfg.diffusion = dict(num_train_timesteps=500, beta_end=0.012)
    cfg.method.update(num_ddim_steps=25, timestep_scaling=0.005, sigma_data=200.0)
    pipe = load_pipeline(cfg, model=Stub().eval(), like=default_pipe)
    z = pipe.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=1), seed=5)
    betas = np.linspace(1e-4 * 2, 0.012 * 2, 500)  # IDDPM's linear betas, rescaled by 1000 / T
    a = np.prod(1 - betas)  # alpha_bar at t = 499
    s, sd = 0.005 * 499, 200.0
    c_skip, c_out = sd**2 / (s**2 + sd**2), s / np.sqrt(s**2 + sd**2)
    x_T = torch.randn(2, 12, 16, 16, generator=torch.Generator().manual_seed(5)).double()
    y, mask = pipe.encode(PROMPTS)
    eps = pipe.model(x_T.float(), torch.full((2,), 499), y, mask).double()
    want = c_skip * x_T + c_out * (x_T - np.sqrt(1 - a) * eps) / np.sqrt(a)
    assert close(z, want)


@pytest.mark.parametrize("sampler", ["dpm", "ddim"])
def test_teacher_samplers_follow_the_schedule_and_ignore_the_lcm_settings(base, default_pipe, sampler):
    run = SamplerConfig(name=sampler, steps=3, cfg_scale=1.0)
    default = default_pipe.sample_latents(PROMPTS, run, seed=2)
    for name in ("num_ddim_steps", "timestep_scaling", "sigma_data"):
        pipe = load_pipeline(variant(base, name), model=default_pipe.model, like=default_pipe)
        assert torch.equal(pipe.sample_latents(PROMPTS, run, seed=2), default)
    for name in ("T", "betas", "scaled_linear"):
        pipe = load_pipeline(variant(base, name), model=default_pipe.model, like=default_pipe)
        assert not close(pipe.sample_latents(PROMPTS, run, seed=2), default)
    # DDIM by hand on T = 500: "leading" timesteps [2, 1, 0] x (500 // 3) = [332, 166, 0], a_prev = 1 at the end
    if sampler == "ddim":
        pipe = load_pipeline(variant(base, "T"), model=default_pipe.model, like=default_pipe)
        ac = np.cumprod(1 - np.linspace(2e-4, 0.04, 500))
        x = torch.randn(2, 12, 16, 16, generator=torch.Generator().manual_seed(2)).double()
        y, mask = pipe.encode(PROMPTS)
        for t, prev in ((332, 166), (166, 0), (0, None)):
            eps = pipe.model(x.float(), torch.full((2,), t), y, mask).double()
            x0 = (x - np.sqrt(1 - ac[t]) * eps) / np.sqrt(ac[t])
            a_prev = 1.0 if prev is None else ac[prev]
            x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
        assert close(pipe.sample_latents(PROMPTS, run, seed=2), x)


def test_the_trainers_sample_grids_use_the_configs_process(base):
    from diffusion.engine.validation import Validator

    cfg = variant(base, "T")
    validator = SimpleNamespace(cfg=cfg, val_cfg=dict(prompts=PROMPTS[:1]), device=torch.device("cpu"))
    pipe = Validator.build_pipeline(validator, Stub())
    assert pipe.process == DiffusionProcess.from_config(cfg) and pipe.schedule.num_train_timesteps == 500


def test_the_issues_config_is_now_sampled_as_its_student_was_trained(base, default_pipe):
    """tools/sample.py --config C with method.timestep_scaling=1.0, num_ddim_steps=25 gave the shipped config's
    images: the pipeline ignored the method. Now the process is C's (at 2 steps also the timesteps differ)."""
    cfg = Config(base.to_dict())
    cfg.method.update(timestep_scaling=1.0, num_ddim_steps=25)
    pipe = load_pipeline(cfg, model=default_pipe.model)
    assert pipe.process.lcm.timestep_scaling == 1.0 and pipe.process.lcm.num_ddim_steps == 25
    assert pipe.process.lcm_scheduler().set_timesteps(2).tolist() == [999, 519]  # 50 steps: [999, 499]
    run = SamplerConfig(name="lcm", steps=2)
    assert not close(pipe.sample_latents(PROMPTS, run, seed=0), default_pipe.sample_latents(PROMPTS, run, seed=0))


def test_old_configs_with_the_schedule_in_the_method_still_work(base):
    """Configs written before the ``diffusion`` section (method.num_steps / num_train_steps / beta_start / beta_end)
    are read as that section, with a FutureWarning naming the new key; both places disagreeing is an error."""
    teacher = Config(dict(base.to_dict(), method=dict(type="DiffusionLoss", num_steps=500, beta_end=0.012)))
    with pytest.warns(FutureWarning, match=r"method\.num_steps is now diffusion\.num_train_timesteps"):
        process = DiffusionProcess.from_config(teacher)
    assert process == DiffusionProcess.from_config(dict(diffusion=dict(num_train_timesteps=500, beta_end=0.012)))
    with pytest.warns(FutureWarning):
        method = build_method(teacher, Stub())
    assert method.schedule == process.schedule
    from diffusion.registry import METHODS

    with pytest.warns(FutureWarning):  # the registry reads them too (a direct build of an old method section)
        assert METHODS.build(dict(teacher.method, model=Stub(), pred_sigma=False)).schedule == process.schedule
    lcm = Config(dict(base.to_dict(), method=dict(base.method, num_train_steps=500)))
    with pytest.warns(FutureWarning, match="num_train_steps"):
        assert build_method(lcm, Stub()).process.schedule.num_train_timesteps == 500
    both = Config(dict(teacher.to_dict(), diffusion=dict(num_train_timesteps=1000)))
    with pytest.raises(ValueError, match=r"method\.num_steps = 500 and diffusion\.num_train_timesteps = 1000"):
        DiffusionProcess.from_config(both)


def test_bad_process_keys_are_named(base):
    with pytest.raises(KeyError, match=r"'num_steps'.*'diffusion'.*num_train_timesteps"):
        DiffusionProcess.from_config(dict(diffusion=dict(num_steps=500)))
    with pytest.raises(ValueError, match="unknown beta_schedule 'cosine'"):
        DiffusionProcess.from_config(dict(diffusion=dict(beta_schedule="cosine")))
    with pytest.raises(KeyError, match="method.schedule is not a config key"):
        build_method(dict(base.to_dict(), method=dict(base.method, schedule=dict(num_train_timesteps=10))), Stub())
    with pytest.raises(ValueError, match=r"num_ddim_steps must be in \[1, 40\]"):
        build_method(dict(base.to_dict(), diffusion=dict(num_train_timesteps=40)), Stub())


def test_a_network_of_another_config_is_sampled_under_that_configs_process(base, default_pipe):
    """Route (a) of the controllable LCM puts a teacher's ControlNet (a DiffusionLoss config) on an LCM student: the
    student's LCM settings come from the student's config, passed as ``process``."""
    student = variant(base, "sigma_data")
    teacher_cfg = Config(dict(base.to_dict(), method=dict(type="DiffusionLoss")))
    process = DiffusionProcess.from_config(student)
    pipe = load_pipeline(teacher_cfg, model=default_pipe.model, like=default_pipe, process=process)
    assert pipe.process == process != DiffusionProcess.from_config(teacher_cfg)
    assert pipe.with_model(Stub().eval()).process == process  # with_model keeps it
