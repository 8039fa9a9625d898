"""LCM: boundary scalings, the LCD DDIM solver, timestep schedules and step-by-step parity with diffusers."""

import pytest
import torch
from diffusers import LCMScheduler as DiffusersLCMScheduler

from diffusion.registry import SCHEDULERS
from diffusion.schedulers import DDIMSolver, LCMScheduler, NoiseSchedule, boundary_scalings

LINEAR = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, timestep_scaling=10.0)


def fake_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(0.3 * x + t.to(x.dtype).reshape(-1, 1, 1, 1) / 1000)


def test_boundary_scalings_values():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 1, 19, 999]))
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0  # exact identity at the boundary
    assert c_skip.dtype == torch.float64
    s = torch.tensor([10.0, 190.0, 9990.0], dtype=torch.float64)
    torch.testing.assert_close(c_skip[1:], 0.25 / (s**2 + 0.25))
    torch.testing.assert_close(c_out[1:], s / (s**2 + 0.25).sqrt())
    assert c_skip[1].item() == pytest.approx(0.25 / 100.25, rel=1e-12)
    assert c_skip[2].item() == pytest.approx(6.925e-6, rel=1e-3)
    assert c_out[3].item() == pytest.approx(1.0, abs=1e-8)
    ref = DiffusersLCMScheduler(**LINEAR)
    for t in (0, 19, 259, 999):
        expected = ref.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        got = boundary_scalings(t)
        assert got[0].item() == pytest.approx(expected[0].item(), rel=1e-6)
        assert got[1].item() == pytest.approx(expected[1].item(), rel=1e-6)
    # Float input keeps its dtype; other constants are real arguments.
    half = boundary_scalings(torch.tensor([2.0], dtype=torch.float32), sigma_data=1.0, timestep_scaling=0.5)
    assert half[0].dtype == torch.float32 and half[0].item() == pytest.approx(0.5)


def test_ddim_solver_tables_step_and_sampling():
    schedule = NoiseSchedule()
    solver = DDIMSolver(schedule)
    assert solver.ddim_timesteps.tolist() == list(range(19, 1000, 20))
    assert solver.alphas_cumprod_prev[0] == schedule.alphas_cumprod[0]
    torch.testing.assert_close(solver.alphas_cumprod_prev[1:], schedule.alphas_cumprod[19:980:20])
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
    index = torch.tensor([0, 1, 49])
    out = solver.ddim_step(x0, eps, index)
    for i, prev_t in enumerate([0, 19, 979]):
        a = schedule.alphas_cumprod[prev_t].float()
        torch.testing.assert_close(out[i], a.sqrt() * x0[i] + (1 - a).sqrt() * eps[i])
    # The DDIM jump of q_sample(x0, start_t) with the true eps is q_sample(x0, t) with the same eps.
    start_t = solver.ddim_timesteps[index]
    xt = schedule.q_sample(x0.double(), start_t, eps.double())
    x0_hat = schedule.x0_from_eps(xt, start_t, eps.double())
    target_t = (start_t - 20).clamp(min=0)
    torch.testing.assert_close(
        solver.ddim_step(x0_hat, eps.double(), index), schedule.q_sample(x0.double(), target_t, eps.double())
    )
    index = torch.arange(50)
    start_t, t = solver.timesteps_of(index)
    assert torch.equal(start_t, index * 20 + 19) and torch.equal(t, (start_t - 20).clamp(min=0))


def test_ddim_solver_on_another_grid_and_chain():
    """k = T // N on any schedule: N = 25 of 1000 steps skips 40; N = 50 of 500 skips 10 (t = 9, 19, ..., 499)."""
    coarse = DDIMSolver(NoiseSchedule(), 25)
    assert coarse.skip == 40 and coarse.ddim_timesteps.tolist() == list(range(39, 1000, 40))
    short = NoiseSchedule(num_train_timesteps=500)
    solver = DDIMSolver(short, 50)
    assert solver.ddim_timesteps.tolist() == list(range(9, 500, 10))
    torch.testing.assert_close(solver.alphas_cumprod_prev[1:], short.alphas_cumprod[9:490:10])
    with pytest.raises(ValueError, match=r"num_ddim_steps must be in \[1, 500\]"):
        DDIMSolver(short, 501)


@pytest.mark.parametrize(
    "schedule,expected",
    [
        ("pixart", {1: [999], 2: [999, 499], 3: [999, 679, 359], 4: [999, 759, 519, 279],
                    8: [999, 879, 759, 639, 519, 399, 279, 159]}),
        ("diffusers", {1: [999], 2: [999, 499], 3: [999, 679, 339], 4: [999, 759, 499, 259],
                       8: [999, 879, 759, 639, 499, 379, 259, 139]}),
    ],
)  # fmt: skip
def test_schedules(schedule, expected):
    sched = SCHEDULERS.build(dict(type="LCMScheduler", spacing=schedule))
    for n, steps in expected.items():
        assert sched.set_timesteps(n).tolist() == steps
    assert sched.set_timesteps(50).tolist() == list(range(999, 0, -20))


def test_diffusers_flavour_matches_diffusers_set_timesteps():
    ours, ref = LCMScheduler(spacing="diffusers"), DiffusersLCMScheduler(**LINEAR)
    for n in range(1, 51):
        ref.set_timesteps(n)
        assert ours.set_timesteps(n).tolist() == ref.timesteps.tolist()


def test_set_timesteps_errors():
    sched = LCMScheduler()
    with pytest.raises(ValueError, match="exactly one"):
        sched.set_timesteps()
    with pytest.raises(ValueError, match="exactly one"):
        sched.set_timesteps(4, [999])
    with pytest.raises(ValueError, match=r"\[1, 50\]"):
        sched.set_timesteps(51)
    with pytest.raises(ValueError, match="descending"):
        sched.set_timesteps(timesteps=[999, 999])
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        sched.set_timesteps(timesteps=[1000, 500])
    with pytest.raises(ValueError, match="unknown LCM schedule"):
        LCMScheduler(spacing="karras")
    with pytest.raises(RuntimeError, match="set_timesteps"):
        LCMScheduler().step(torch.zeros(1), 999, torch.zeros(1))
    sched.set_timesteps(timesteps=[999, 500])
    with pytest.raises(ValueError, match="not in the schedule"):
        sched.step(torch.zeros(1), 998, torch.zeros(1))


@pytest.mark.parametrize("n", [1, 2, 4, 8, 50])
@pytest.mark.parametrize("flavour", ["pixart", "diffusers"])
def test_step_parity_with_diffusers(n, flavour):
    ours = LCMScheduler(spacing=flavour)
    timesteps = ours.set_timesteps(n).tolist()
    ref = DiffusersLCMScheduler(**LINEAR)
    ref.alphas_cumprod = ours.noise_schedule.alphas_cumprod.clone()  # identical fp64 tables
    ref.set_timesteps(timesteps=timesteps)
    x_ref = x_ours = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gen_ref, gen_ours = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for t in timesteps:
        t_batch = torch.full((2,), t)
        x_ref, den_ref = ref.step(
            fake_eps(x_ref, t_batch), torch.tensor(t), x_ref, generator=gen_ref, return_dict=False
        )
        x_ours, den_ours = ours.step(fake_eps(x_ours, t_batch), t_batch, x_ours, generator=gen_ours)
        torch.testing.assert_close(x_ours, x_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(den_ours, den_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_ours, den_ours)  # the last step adds no noise
    # The loop helper consumes the generator the same way and returns the final denoised sample.
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []
    out = ours.sample(lambda x, t: calls.append(t) or fake_eps(x, t), x_T, n, torch.Generator().manual_seed(11))
    assert len(calls) == n and [int(c[0]) for c in calls] == timesteps
    torch.testing.assert_close(out, den_ref, rtol=1e-5, atol=1e-5)


def test_step_parity_with_default_fp32_diffusers_tables():
    ours, ref = LCMScheduler(), DiffusersLCMScheduler(**LINEAR)
    timesteps = ours.set_timesteps(4).tolist()
    ref.set_timesteps(timesteps=timesteps)
    x_ref = x_ours = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    gen_ref, gen_ours = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for t in timesteps:
        eps = fake_eps(x_ref, torch.full((2,), t))
        x_ref, den_ref = ref.step(eps, torch.tensor(t), x_ref, generator=gen_ref, return_dict=False)
        x_ours, den_ours = ours.step(eps, t, x_ours, generator=gen_ours)
        assert x_ours.dtype == torch.float32
        torch.testing.assert_close(den_ours, den_ref, rtol=1e-4, atol=1e-4)
        x_ours = x_ref  # compare each step from the same input; fp32 table round-off is amplified by 1/sqrt(a_999)
