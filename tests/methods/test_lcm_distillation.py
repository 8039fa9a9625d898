"""LCMDistillation (PixArt-delta Algorithm 1): frozen teacher, EMA target, loss, LoRA and w-embedding variants, on
any diffusion process. Random draws come from a generator given to the method, or are passed in: no test patches the
global RNG functions."""

import pytest
import torch

from diffusion.methods import LCMDistillation, consistency_fn
from diffusion.methods.lcm_distillation import LCDDraws
from diffusion.methods.lcm_targets import EMATarget, StudentTarget
from diffusion.schedulers import NoiseSchedule
from tests.model.helpers import inputs, tiny


def _model(random: bool = True, **kw):
    return tiny(True, random=random, std=0.05, pe_interpolation=1.0, class_dropout_prob=0.0, **kw)


def _batch(b=3):
    x, _, y, mask, info = inputs(batch=b)
    return {"x0": x, "y": y, "y_mask": mask, "data_info": info}


def _step(method, model, opt, batch):
    loss, logs = method(model, batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
    method.after_optimizer_step(model)
    return loss.item()


def test_consistency_fn_is_identity_at_t0():
    sched = NoiseSchedule()
    xt, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    assert torch.equal(consistency_fn(sched, xt, torch.zeros(2, dtype=torch.long), eps), xt)


def test_teacher_frozen_target_moves_only_after_optimizer_step():
    model = _model()
    method = LCMDistillation(model, ema_decay=0.95)
    teacher0 = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    target0 = [p.clone() for p in method.target.parameters()]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss, _ = method(model, _batch())
    loss.backward()  # gradients alone (an accumulation micro-step) must not move the target
    assert all(torch.equal(a, b) for a, b in zip(target0, method.target.parameters()))
    opt.step()
    method.after_optimizer_step(model)
    for t0, t1, s in zip(target0, method.target.parameters(), model.parameters()):
        assert torch.allclose(t1, 0.95 * t0 + 0.05 * s.detach(), atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(target0, method.target.parameters()))
    for _ in range(2):
        _step(method, model, opt, _batch())
    assert all(torch.equal(v, method.teacher.state_dict()[k]) for k, v in teacher0.items())
    assert not any(p.requires_grad for p in method.teacher.parameters())
    assert list(method.state_dict()) == []  # teacher/target are not parameters of the method


def test_teacher_step_is_guided_ddim():
    """With a teacher whose eps ignores the caption, guidance cancels and x_prev is the plain DDIM jump."""
    model = _model()
    method = LCMDistillation(model, generator=torch.Generator().manual_seed(3))
    _, logs = method(model, _batch())
    assert torch.isfinite(logs["mse_to_target"])
    sched, solver = method.schedule, method.solver
    x0, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    index = torch.tensor([0, 49])
    start = solver.ddim_timesteps[index]
    xt = sched.q_sample(x0, start, eps)
    x_prev = solver.ddim_step(sched.x0_from_eps(xt, start, eps), eps, index)
    assert torch.allclose(x_prev, sched.q_sample(x0, (start - 20).clamp(min=0), eps), atol=1e-5)


def test_distillation_loss_decreases():
    """Same draws (t, noise) every step: the Huber consistency loss must fall as the student learns."""
    model = _model()
    generator = torch.Generator()
    method = LCMDistillation(model, generator=generator)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    batch, losses = _batch(4), []
    for _ in range(20):
        generator.manual_seed(1)
        losses.append(_step(method, model, opt, batch))
    assert losses[-1] < 0.3 * losses[0]


def test_extra_state_round_trip():
    model = _model()
    a = LCMDistillation(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _step(a, model, opt, _batch())
    state = a.extra_state()
    assert state and all(k.startswith("target.") for k in state)
    b = LCMDistillation(_model())
    b.load_extra_state(state)
    assert all(torch.equal(p, q) for p, q in zip(a.target.parameters(), b.target.parameters()))


def test_lora_trains_adapters_only_and_is_its_own_target():
    model = _model()
    method = LCMDistillation(model, lora=dict(rank=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert isinstance(method.target_strategy, StudentTarget) and method.frozen_networks() == [method.teacher]
    assert method.target is model and method.extra_state() == {}
    method.load_extra_state({})
    with pytest.raises(ValueError, match="its own target"):
        method.load_extra_state({"target.x": torch.zeros(1)})
    before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        _step(method, model, opt, _batch())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_guidance_embedding_student_starts_equal_to_teacher():
    teacher = _model()
    student = _model(random=False, guidance_embedding=True)  # w_embedder at its zero init
    student.load_state_dict(teacher.state_dict())  # teacher checkpoint has no w_embedder keys
    x, t, y, mask, info = inputs()
    with torch.no_grad():
        a = teacher.eval()(x, t, y, mask, info)
        b = student.eval()(x, t, y, mask, dict(info, guidance=torch.tensor([3.0, 6.0, 9.0])))
    assert torch.allclose(a, b, atol=1e-6)
    method = LCMDistillation(student, w_range=(3.0, 15.0), guidance_embedding=True)
    loss, logs = method(student, _batch())
    loss.backward()
    assert student.w_embedder.mlp[2].weight.grad.abs().sum() > 0
    assert 3.0 <= logs["w"] <= 15.0
    with pytest.raises(ValueError, match="guidance_embedding"):
        LCMDistillation(_model(), guidance_embedding=True)


PIXART = dict(T=1000, beta_start=1e-4, beta_end=0.02, N=50, timestep_scaling=10.0, sigma_data=0.5)


def _algorithm1_loss(method, model, batch, index, noise, w, c=None, process=PIXART):
    """PixArt-delta Algorithm 1 / LCM's train_lcm_distill, written from the paper: IDDPM's linear betas (rescaled by
    1000 / T), DDIM skip k = T // N, guided teacher step cond + w (cond - uncond) on x0 and eps from the learned null
    caption, boundary scalings c_skip = sd^2 / ((s t)^2 + sd^2), c_out = s t / sqrt((s t)^2 + sd^2), Huber c = 0.001.
    ``process``: those constants (PixArt-delta's by default). Uses only the three networks of ``method``; ``c``: the
    control latent every network sees (route (b) of the controllable LCM)."""
    x0, y, mask, info = batch["x0"], batch["y"], batch["y_mask"], batch["data_info"]
    T, k, s, sd = process["T"], process["T"] // process["N"], process["timestep_scaling"], process["sigma_data"]
    betas = torch.linspace(process["beta_start"], process["beta_end"], T, dtype=torch.float64) * (1000 / T)
    ac = torch.cumprod(1 - betas, 0)
    start = (index + 1) * k - 1  # t_{n+k} on the N-step grid [k - 1, 2k - 1, ..., Nk - 1]
    prev = (start - k).clamp(min=0)  # t_n

    def col(v):
        return v.float().view(-1, 1, 1, 1)

    def x0_of(xt, t, eps):
        return (xt - col((1 - ac[t]).sqrt()) * eps) / col(ac[t].sqrt())

    def f(xt, t, eps):  # c_skip(t) x_t + c_out(t) x0
        st = s * t.double()
        return col(sd**2 / (st**2 + sd**2)) * xt + col(st / (st**2 + sd**2).sqrt()) * x0_of(xt, t, eps)

    def eps_of(net, xt, t, yy):
        return net(xt, t, yy, mask, info, **({} if c is None else {"c": c}))[:, : xt.shape[1]]

    xt = col(ac[start].sqrt()) * x0 + col((1 - ac[start]).sqrt()) * noise
    pred = f(xt, start, eps_of(model, xt, start, y))
    with torch.no_grad():
        null = method.teacher.y_embedder.y_embedding[None, None].expand(len(x0), 1, -1, -1)
        e_c, e_u = eps_of(method.teacher, xt, start, y), eps_of(method.teacher, xt, start, null)
        x0_c, x0_u = x0_of(xt, start, e_c), x0_of(xt, start, e_u)
        x0_g, e_g = x0_c + w * (x0_c - x0_u), e_c + w * (e_c - e_u)
        x_prev = col(ac[prev].sqrt()) * x0_g + col((1 - ac[prev]).sqrt()) * e_g
        target = f(x_prev, prev, eps_of(method.target, x_prev, prev, y))
    return (torch.sqrt((pred - target) ** 2 + 0.001**2) - 0.001).mean()


def _draws(batch, index, w=4.5):
    noise = torch.randn(batch["x0"].shape, generator=torch.Generator().manual_seed(5))
    return LCDDraws(index, noise, torch.full((len(index),), w))


def test_one_lcd_step_matches_algorithm_1():
    """Given draws (n, noise, w = 4.5), as consistency_models passes its noise, and three different networks
    (teacher, drifted target, trained student)."""
    from tests.model.helpers import randomize

    model = _model()
    method = LCMDistillation(model, w=4.5)
    randomize(model, std=0.05, seed=11)  # the student has moved away from the teacher ...
    randomize(method.target, std=0.05, seed=12)  # ... and the target is neither
    batch = _batch(3)
    index = torch.tensor([0, 23, 49])
    draws = _draws(batch, index)
    loss, logs = method(model, batch, draws=draws)
    want = _algorithm1_loss(method, model, batch, index, draws.noise, 4.5)
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-7)
    for wrong in (-4.5, 5.5):  # the test can tell a flipped guidance sign or the CFG convention apart
        assert abs(_algorithm1_loss(method, model, batch, index, draws.noise, wrong).item() - loss.item()) > 1e-4
    loss.backward()
    want = _algorithm1_loss(method, model, batch, index, draws.noise, 4.5)
    want_grad = torch.autograd.grad(want, model.t_block[1].weight)
    torch.testing.assert_close(model.t_block[1].weight.grad, want_grad[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "changed",
    [
        dict(T=500),
        dict(beta_end=0.012),
        dict(N=25),
        dict(timestep_scaling=0.05),
        dict(sigma_data=100.0),
    ],
)
def test_one_lcd_step_follows_the_configured_process(changed):
    """Each setting of the process (T and the betas: the ``schedule`` built from the config's ``diffusion``
    section; N, timestep_scaling, sigma_data: method keys) enters the loss as Algorithm 1 says, and changes it.
    (The boundary scalings move away from c_skip = 0, c_out = 1 only where s t is not >> sigma_data: with the paper's
    values below t ~ 1, hence the large changes here.)"""
    from tests.model.helpers import randomize

    process = dict(PIXART, **changed)
    model = _model()
    schedule = NoiseSchedule(process["T"], "linear", process["beta_start"], process["beta_end"])
    lcm = {k: process[k] for k in ("timestep_scaling", "sigma_data")}
    method = LCMDistillation(model, schedule=schedule, num_ddim_steps=process["N"], **lcm)
    randomize(model, std=0.05, seed=11)
    randomize(method.target, std=0.05, seed=12)
    batch = _batch(3)
    index = torch.tensor([0, 7, process["N"] - 1])
    draws = _draws(batch, index)
    loss, _ = method(model, batch, draws=draws)
    want = _algorithm1_loss(method, model, batch, index, draws.noise, 4.5, process=process)
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-7)
    default = _algorithm1_loss(method, model, batch, index, draws.noise, 4.5)
    assert abs(default.item() - loss.item()) > 1e-4 * loss.item()  # the setting matters


def test_draws_come_from_the_given_generator_only():
    """Equal generators give equal steps, the global RNG is neither used nor moved, and a generator restored from
    its state continues exactly (what a checkpoint of it would give); w ~ U[w_min, w_max) is drawn from it too."""
    batch = _batch(4)

    def loss_of(seed_or_state, w_range=None):
        generator = torch.Generator()
        if isinstance(seed_or_state, int):
            generator.manual_seed(seed_or_state)
        else:
            generator.set_state(seed_or_state)
        model = _model()
        method = LCMDistillation(model, w_range=w_range, generator=generator)
        before = torch.get_rng_state()
        loss, logs = method(model, batch)
        assert torch.equal(torch.get_rng_state(), before)  # nothing drawn from the global RNG
        return loss, logs, generator

    a, _, gen = loss_of(7)
    assert torch.equal(loss_of(7)[0], a) and not torch.equal(loss_of(8)[0], a)
    state = gen.get_state()
    model = _model()
    method = LCMDistillation(model, generator=gen)
    second, _ = method(model, batch)
    assert torch.equal(loss_of(state)[0], second)  # the restored generator draws what the live one drew
    _, logs, _ = loss_of(3, w_range=(3.0, 15.0))
    assert 3.0 <= logs["w"] <= 15.0 and logs["w"] != loss_of(4, w_range=(3.0, 15.0))[1]["w"]


def test_without_a_generator_the_draws_are_the_global_rngs():
    """None (the trainer's case): the global RNG, which the trainer seeds and checkpoints per rank, in PixArt's
    order: randint for n, then the noise."""
    model = _model()
    method = LCMDistillation(model)
    x0 = _batch(3)["x0"]
    torch.manual_seed(5)
    draws = method.draw(x0)
    torch.manual_seed(5)
    assert torch.equal(draws.index, torch.randint(0, 50, (3,)))
    assert torch.equal(draws.noise, torch.randn_like(x0))
    assert torch.equal(draws.w, torch.full((3,), 4.5))


def test_the_target_is_an_ema_strategy_object():
    model = _model()
    method = LCMDistillation(model, ema_decay=0.9)
    assert isinstance(method.target_strategy, EMATarget) and method.target_strategy.decay == 0.9
    assert method.frozen_networks() == [method.teacher, method.target]
    with pytest.raises(KeyError, match="expected target"):
        method.load_extra_state({"ema.x": torch.zeros(1)})


def test_lcm_config_without_a_teacher_is_an_error(tmp_path):
    from diffusion.engine import Trainer
    from tests.engine.standins import tiny_config

    cfg = tiny_config(model=dict(type="PixArt_tiny"), method=dict(type="LCMDistillation"))
    with pytest.raises(KeyError, match="weights.teacher"):
        Trainer(cfg, tmp_path)


def test_bf16_teacher_option_halves_its_memory_and_keeps_the_loss():
    model = _model()
    fp32 = LCMDistillation(model, generator=torch.Generator().manual_seed(2))
    bf16 = LCMDistillation(model, teacher_dtype="bf16", generator=torch.Generator().manual_seed(2))
    assert all(p.dtype == torch.bfloat16 for p in bf16.teacher.parameters())
    assert all(p.dtype == torch.float32 for p in bf16.target.parameters())
    batch = _batch()
    want, _ = fp32(model, batch)
    got, _ = bf16(model, batch)  # the same draws: only the teacher's precision differs
    assert torch.isfinite(got) and abs(got.item() - want.item()) <= 0.05 * want.item()
    with pytest.raises(ValueError, match="bf16"):
        LCMDistillation(model, teacher_dtype="fp8")


# ------------------------------------------------------------------ route (b): a controlled teacher and student
def _controlnet_student(tmp_path):
    """A ControlNet (1 copy) on a 'student' base whose copies are 'trained' (random), and a teacher base file that
    differs from the student's base: what configs/controlnet/tiny_controlnet_lcm.py sets up with the assets."""
    from safetensors.torch import save_file

    from diffusion.model.controlnet import wrap_controlnet
    from tests.model.helpers import randomize

    teacher_file = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in _model().state_dict().items()}, str(teacher_file))
    student = wrap_controlnet(randomize(_model(), std=0.05, seed=21), "transformer", 1)
    randomize(student.controlnet, std=0.05, seed=22)  # non-zero projections: the control matters
    return student, teacher_file


def test_controlled_distillation_teacher_has_its_base_and_the_students_copies(tmp_path):
    from safetensors.torch import load_file

    student, teacher_file = _controlnet_student(tmp_path)
    method = LCMDistillation(student, teacher_weights=str(teacher_file))
    want = load_file(str(teacher_file))
    base = method.teacher.base_model.state_dict()
    assert all(torch.equal(base[k], v) for k, v in want.items() if not k.endswith("pos_embed"))
    assert not torch.equal(base["blocks.0.attn.qkv.weight"], student.base_model.blocks[0].attn.qkv.weight)
    copies = dict(student.controlnet.named_parameters())
    assert all(torch.equal(p, copies[n]) for n, p in method.teacher.controlnet.named_parameters())


def test_one_controlled_lcd_step_matches_algorithm_1_with_the_control_everywhere(tmp_path):
    from tests.model.helpers import randomize

    student, teacher_file = _controlnet_student(tmp_path)
    method = LCMDistillation(student, w=4.5, teacher_weights=str(teacher_file))
    randomize(method.target.controlnet, std=0.05, seed=23)  # a drifted target
    batch = _batch(3)
    c = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(6)).expand(3, -1, -1, -1).contiguous()
    batch["c"] = c
    index = torch.tensor([0, 23, 49])
    draws = _draws(batch, index)
    loss, _ = method(student, batch, draws=draws)
    want = _algorithm1_loss(method, student, batch, index, draws.noise, 4.5, c=c)
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-7)
    for wrong in (None, c.flip(-1)):  # the test tells a dropped or a different control apart
        got = _algorithm1_loss(method, student, batch, index, draws.noise, 4.5, c=wrong)
        assert abs(got.item() - loss.item()) > 1e-5


def test_controlled_distillation_trains_only_the_copies_and_checkpoints_only_them(tmp_path):
    student, teacher_file = _controlnet_student(tmp_path)
    method = LCMDistillation(student, teacher_weights=str(teacher_file))
    base_before = {k: v.clone() for k, v in student.base_model.state_dict().items()}
    target_before = {k: v.clone() for k, v in method.target.state_dict().items()}
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.5)
    batch = dict(_batch(3), c=torch.randn(3, 4, 8, 12))
    _step(method, student, opt, batch)
    assert all(p.grad is None for p in student.base_model.parameters())
    assert all(torch.equal(v, student.base_model.state_dict()[k]) for k, v in base_before.items())
    after = method.target.state_dict()
    moved = {k for k, v in target_before.items() if not torch.equal(v, after[k])}
    assert moved and all(k.startswith("controlnet.") for k in moved)  # the EMA covers the copies only
    state = method.extra_state()
    assert state and all(k.startswith("target.controlnet.") for k in state)
    (tmp_path / "b").mkdir()
    other, _ = _controlnet_student(tmp_path / "b")
    fresh = LCMDistillation(other, teacher_weights=str(teacher_file))
    fresh.load_extra_state(state)
    assert all(torch.equal(v, fresh.target.state_dict()[k]) for k, v in after.items() if k.startswith("controlnet."))
    with pytest.raises(KeyError, match="lacks trained parameters"):
        fresh.load_extra_state({k: v for k, v in state.items() if "after_proj" not in k})


def test_a_control_latent_for_a_plain_model_is_an_error():
    model = _model()
    with pytest.raises(ValueError, match="no ControlNet"):
        LCMDistillation(model)(model, dict(_batch(2), c=torch.randn(2, 4, 8, 12)))


@pytest.mark.parametrize(
    "method",
    [
        dict(type="LCMDistillation"),
        dict(type="LCMDistillation", guidance_embedding=True, w=3.0, sampler=dict(name="lcm", steps=2)),
        dict(type="DiffusionLoss", sampler=dict(name="ddim", steps=5)),
        None,
    ],
)
def test_method_sampler_from_the_config_is_the_built_methods(method):
    """``method_sampler(cfg)`` (tools/sample.py, config alone) gives what the built method's ``sampler_defaults()``
    gives the trainer's sample grids."""
    from diffusion.methods import DiffusionLoss, method_sampler
    from diffusion.registry import METHODS

    cfg = {} if method is None else {"method": method}
    model = _model(guidance_embedding=bool(method and method.get("guidance_embedding")))
    built = DiffusionLoss(model) if method is None else METHODS.build(dict(method, model=model))
    assert method_sampler(cfg) == built.sampler_defaults()


def test_a_t5_null_caption_file_is_the_unconditional_branch_with_the_captions_mask(tmp_path):
    """The official LCM-LoRA script's uncond: T5("") (``pipe.encode_prompt("")``) under each caption's own mask; a file
    without ``y_mask`` means that, one with it keeps its own; a missing file names the tool that writes it."""
    from safetensors.torch import save_file

    model = _model()
    y, mask = _batch()["y"], _batch()["y_mask"]
    null = torch.randn(1, 1, y.shape[2], y.shape[3])
    save_file({"y": null}, str(tmp_path / "null.safetensors"))
    method = LCMDistillation(model, null_caption=str(tmp_path / "null.safetensors"))
    uy, umask = method._uncond(y, mask)
    assert torch.equal(uy, null.expand_as(y)) and torch.equal(umask, mask)
    own = torch.zeros(1, y.shape[2], dtype=mask.dtype)
    own[0, 0] = 1
    save_file({"y": null, "y_mask": own}, str(tmp_path / "own.safetensors"))
    _, umask = LCMDistillation(model, null_caption=str(tmp_path / "own.safetensors"))._uncond(y, mask)
    assert torch.equal(umask, own.expand_as(mask))
    with pytest.raises(FileNotFoundError, match="(?s)missing.safetensors.*make_null_caption"):
        LCMDistillation(model, null_caption=str(tmp_path / "missing.safetensors"))
    save_file({"y": null[..., :-1].contiguous()}, str(tmp_path / "narrow.safetensors"))
    with pytest.raises(ValueError, match="narrow.safetensors"):
        LCMDistillation(model, null_caption=str(tmp_path / "narrow.safetensors"))._uncond(y, mask)
