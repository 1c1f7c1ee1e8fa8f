"""Tests of the fused Transformer Filter loop :mod:`lqgt.kernels.tf_loop`.

Oracle: :func:`lqgt.simulate`'s torch path (the filter's own ``step``, kernel form) on the
same standard normals, fed to the kernel through its debug entry; with its own noise, the
kernel draws exactly :func:`lqgt.kernels.philox_normals`, the numbers of the fused linear
loop (common random numbers). CPU: Triton's interpreter; GPU tests are marked.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import lqgt
from lqgt.kernels import philox_normals
from lqgt.kernels.tf_loop import TFLoop, run_tf_loop
from lqgt.lqg import _cost_weights
from lqgt.simulate import _Noise

CUDA = torch.cuda.is_available()


def _problem(name):
    if name == "osc":
        ex = lqgt.plants.oscillator()
        p = ex.plant
        plant = lqgt.Plant(p.A, p.B, p.C, W=p.W, V=p.V, m0=[1.0, -0.5], P0=[[0.5, 0.1], [0.1, 0.3]], dt=p.dt)
        return plant, ex.Q, ex.R, None
    ex = lqgt.plants.two_mass()
    p = ex.plant
    plant = lqgt.Plant(p.A, p.B, p.C, W=p.W, V=p.V, D=[[0.5], [-0.3]], m0=[0.2, -0.1, 0.0, 0.3], P0=p.P0, dt=p.dt)
    return plant, ex.Q, ex.R, np.array([[0.05], [-0.02], [0.01], [0.0]])


# (problem, filter gets K (closed-loop tokens) or not (u in the tokens), S, beta, window); β = 0.3 is not a
# float32 number: a kernel that took β as a float argument would miss 1e-12 in float64 on a GPU
CASES = [("osc", True, None, 5.0, 4), ("osc", False, "whiten", 50.0, 3), ("two_mass", True, "whiten", 0.3, 5)]


def _torch_path(case, dt, batch, horizon, burn_in, seed=3):
    name, with_k, S, beta, H = case
    plant, Q, R, N = _problem(name)
    d = lqgt.lqg(plant, Q, R, N)
    tf = lqgt.TransformerFilter(plant, beta=beta, window=H, K=d.K if with_k else None, S=S)
    res = lqgt.simulate(plant, d.K, {"tf": tf}, Q=Q, R=R, N=N, horizon=horizon, batch=batch, seed=seed, dtype=dt,
                        burn_in=burn_in, chunk=horizon, backend="torch", progress=False)
    noise = _Noise(plant, batch, seed, torch.device("cpu"), dt)
    e = noise.draw(horizon)
    loop = TFLoop.build(tf, plant, d.K, noise.Wh_np, noise.Vh_np, _cost_weights(plant, Q, R, N)[3],
                        torch.device("cpu"), dt)
    return res, loop, e, noise.x0


def _state(loop, x0, dev):
    B = x0.shape[0]
    n, m, p, d, r = loop.dims
    hp = 1 << max(0, loop.window - 1).bit_length()
    return (x0.to(dev).clone().contiguous(), loop.m0.to(dev).expand(B, n).clone().contiguous(),
            torch.zeros(d, B, hp, device=dev, dtype=x0.dtype), torch.zeros(B, device=dev, dtype=x0.dtype),
            torch.empty(0, B, 2 * n + m + p, device=dev, dtype=x0.dtype))


def _check(res, cost, out, horizon, burn_in, dt, n, m):
    rtol = 1e-12 if dt == torch.float64 else 1e-5
    ref = res.cost_per_trajectory["tf"]
    per = cost.cpu() / (horizon - burn_in)
    assert torch.allclose(per, ref, rtol=rtol, atol=rtol * float(ref.abs().max())), float((per - ref).abs().max())
    sl = {"x": slice(0, n), "x_hat": slice(n, 2 * n), "u": slice(2 * n, 2 * n + m), "y": slice(2 * n + m, None)}
    for key, s in sl.items():
        got, want = out[..., s].cpu().transpose(0, 1), getattr(res, key)["tf"]
        assert torch.allclose(got, want, rtol=rtol, atol=rtol * max(1.0, float(want.abs().max()))), key


def _interp():
    if CUDA:
        pytest.skip("interpreter tests run on CPU only")
    os.environ["TRITON_INTERPRET"] = "1"
    pytest.importorskip("triton")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-K{c[1]}-S{c[2]}-H{c[4]}")
@pytest.mark.parametrize("dt", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_interpreter_tf_kernel_equals_torch_path(case, dt):
    """Fed the torch path's noise, the fused TF loop equals simulate's step loop (chunked, with burn-in,
    the window wrapping around, D ≠ 0 and cross weights on two_mass, u in the tokens without K)."""
    _interp()
    horizon, burn_in, batch = 11, 3, 10
    res, loop, e, x0 = _torch_path(case, dt, batch, horizon, burn_in)
    x, h, keys, cost, _ = _state(loop, x0, torch.device("cpu"))
    n, m, p, d, r = loop.dims
    out = torch.empty(horizon, batch, 2 * n + m + p, dtype=dt)
    run_tf_loop(loop, x, h, keys, cost, t0=0, steps=5, lo=burn_in, noise=e[:5], out=out[:5])
    run_tf_loop(loop, x, h, keys, cost, t0=5, steps=horizon - 5, lo=0, noise=e[5:], out=out[5:])
    _check(res, cost, out, horizon, burn_in, dt, n, m)


def test_interpreter_tf_kernel_draws_the_shared_philox_noise():
    """With its own noise the TF loop equals itself fed philox_normals (the linear loop's numbers too)."""
    _interp()
    res, loop, e, x0 = _torch_path(CASES[2], torch.float64, 6, 7, 0)
    n, m, p, d, r = loop.dims
    a, b = _state(loop, x0, torch.device("cpu")), _state(loop, x0, torch.device("cpu"))
    out_a, out_b = (torch.empty(7, 6, 2 * n + m + p, dtype=torch.float64) for _ in range(2))
    run_tf_loop(loop, *a[:4], t0=2, steps=7, seed=424242, out=out_a)
    e = philox_normals(424242, 6, 2, 7, n + p).double()
    run_tf_loop(loop, *b[:4], t0=2, steps=7, noise=e, out=out_b)
    assert torch.allclose(out_a, out_b, rtol=1e-6, atol=1e-6) and torch.allclose(a[3], b[3], rtol=1e-6)
    assert not torch.allclose(out_a[1:], out_a[:-1])  # the noise moves the loop


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-K{c[1]}-S{c[2]}-H{c[4]}")
@pytest.mark.parametrize("dt", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_gpu_tf_kernel_equals_torch_path(case, dt):
    horizon, burn_in, batch = 70, 9, 300
    res, loop, e, x0 = _torch_path(case, dt, batch, horizon, burn_in)
    dev = torch.device("cuda")
    loop_c = TFLoop(**{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in vars(loop).items()})
    x, h, keys, cost, _ = _state(loop_c, x0, dev)
    n, m, p, d, r = loop.dims
    out = torch.empty(horizon, batch, 2 * n + m + p, dtype=dt, device=dev)
    run_tf_loop(loop_c, x, h, keys, cost, t0=0, steps=horizon, lo=burn_in, noise=e.to(dev), out=out)
    _check(res, cost, out, horizon, burn_in, dt, n, m)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_tf_kernel_in_simulate_matches_torch_path_statistically():
    """backend="triton" with its own noise: the TF's Monte Carlo cost agrees with the torch path's."""
    plant, Q, R, N = _problem("two_mass")
    d = lqgt.lqg(plant, Q, R, N)
    tf = lqgt.TransformerFilter(plant, beta=20.0, window=8, K=d.K)
    kw = dict(Q=Q, R=R, N=N, horizon=400, batch=1 << 15, device="cuda", burn_in=100, store=False, progress=False)
    a = lqgt.simulate(plant, d.K, {"tf": tf}, seed=1, backend="triton", **kw)
    b = lqgt.simulate(plant, d.K, {"tf": tf}, seed=2, backend="torch", **kw)
    ca, cb = a.cost_per_trajectory["tf"], b.cost_per_trajectory["tf"]
    se = float((ca.var() / ca.numel() + cb.var() / cb.numel()).sqrt())
    assert abs(float(ca.mean() - cb.mean())) < 4 * se


def test_without_triton_the_launcher_names_the_cause(monkeypatch):
    """No Triton: run_tf_loop raises an error that says so and names the way out."""
    import lqgt.kernels.tf_loop as tl_mod

    monkeypatch.setattr(tl_mod, "triton_module", lambda: None)
    res, loop, e, x0 = _torch_path(CASES[0], torch.float64, 4, 3, 0)
    x, h, keys, cost, _ = _state(loop, x0, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="Triton.*backend='torch'"):
        run_tf_loop(loop, x, h, keys, cost, t0=0, steps=3, noise=e)


def test_backend_triton_off_cuda_falls_back_with_one_warning():
    """backend="triton" with a Transformer Filter on the CPU: one warning, then the torch path's numbers."""
    plant, Q, R, N = _problem("osc")
    d = lqgt.lqg(plant, Q, R, N)
    tf = lqgt.TransformerFilter(plant, beta=5.0, window=4, K=d.K)
    kw = dict(Q=Q, R=R, horizon=6, batch=4, seed=2, progress=False)
    with pytest.warns(RuntimeWarning, match="device is not CUDA.*torch path"):
        a = lqgt.simulate(plant, d.K, {"tf": tf}, backend="triton", **kw)
    b = lqgt.simulate(plant, d.K, {"tf": tf}, backend="torch", **kw)
    assert a.cost == b.cost


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("batch", [256, 10_000])
def test_gpu_auto_runs_both_kernels_on_common_noise(batch):
    """backend="auto" with a TF in the call runs the Kalman filter and the TF in their fused kernels at
    any batch size (the numbers of backend="triton", not of the torch path) on the same Philox noise: at
    a large β the TF is the Kalman predictor, and the two costs agree far inside the Monte Carlo error."""
    plant, Q, R, N = _problem("two_mass")
    d = lqgt.lqg(plant, Q, R, N)
    ests = {"kf": lqgt.KalmanFilter(plant, form="predictor"), "tf": lqgt.TransformerFilter(plant, beta=1e4, window=32, K=d.K)}
    kw = dict(Q=Q, R=R, N=N, horizon=300, batch=batch, seed=5, device="cuda", dtype=torch.float64, progress=False)
    auto = lqgt.simulate(plant, d.K, ests, store=True, **kw)
    fused = lqgt.simulate(plant, d.K, ests, store=True, backend="triton", **kw)
    torch_path = lqgt.simulate(plant, d.K, ests, store=False, backend="torch", **kw)
    assert auto.cost == fused.cost and torch.equal(auto.x["tf"], fused.x["tf"])
    assert auto.cost["tf"] != torch_path.cost["tf"]
    assert not torch.allclose(auto.x["tf"][:, 1:], auto.x["tf"][:, :-1])  # the noise moves the loop
    assert torch.equal(auto.x["tf"][:, 0], auto.x["kf"][:, 0])  # one x0 draw for both
    half = (auto.cost_ci["kf"][1] - auto.cost_ci["kf"][0]) / 2
    assert abs(auto.cost["tf"] - auto.cost["kf"]) < 1e-3 * half


def test_auto_takes_the_tf_kernel_only_while_the_window_fits():
    """The rule of backend="auto" for the Transformer Filter: d × H' window cells within the limit."""
    from lqgt.simulate import AUTO_TRITON_MAX_WINDOW_CELLS, _auto_fused, _fused_kind

    plant, Q, R, N = _problem("two_mass")  # d = n + p = 6 (closed-loop tokens), 7 with u
    K = lqgt.lqg(plant, Q, R, N).K
    small = lqgt.TransformerFilter(plant, beta=5.0, window=32, K=K)
    big = lqgt.TransformerFilter(plant, beta=5.0, window=AUTO_TRITON_MAX_WINDOW_CELLS // 4, K=K)
    attn = lqgt.TransformerFilter(plant, beta=5.0, window=8, K=K, impl="attention")
    assert _fused_kind(small) == "tf" and _auto_fused(small, "tf")
    assert _fused_kind(big) == "tf" and not _auto_fused(big, "tf")  # 6 × 256 cells
    assert _fused_kind(attn) is None and not _auto_fused(attn, None)
    kf = lqgt.KalmanFilter(plant, form="predictor")
    assert _fused_kind(kf) == "linear" and _auto_fused(kf, "linear")


def test_auto_fuses_any_batch_with_a_tf_and_from_1e4_without(monkeypatch):
    """simulate hands _use_triton the batch threshold of its estimators: 1 with a Transformer Filter in
    the call (its fused loop is faster at every size), AUTO_TRITON_MIN_BATCH for fixed-gain loops only."""
    import importlib

    sim = importlib.import_module("lqgt.simulate")  # the module (lqgt.simulate is also the function)
    seen = []

    def spy(backend, dev, applies, batch=0, terms=0, auto_ok=True, min_batch=sim.AUTO_TRITON_MIN_BATCH):
        seen.append((applies, auto_ok, min_batch))
        return False

    monkeypatch.setattr(sim, "_use_triton", spy)
    plant, Q, R, N = _problem("osc")
    K = lqgt.lqg(plant, Q, R, N).K
    kf, tf = lqgt.KalmanFilter(plant), lqgt.TransformerFilter(plant, beta=5.0, window=4, K=K)
    kw = dict(Q=Q, R=R, horizon=3, batch=4, seed=0, progress=False)
    lqgt.simulate(plant, K, {"kf": kf, "tf": tf}, **kw)
    lqgt.simulate(plant, K, {"kf": kf}, **kw)
    assert seen == [(True, True, sim.AUTO_TRITON_TF_MIN_BATCH), (True, True, sim.AUTO_TRITON_MIN_BATCH)]
    assert sim.AUTO_TRITON_TF_MIN_BATCH == 1 < sim.AUTO_TRITON_MIN_BATCH


def test_launch_shape_keeps_64_bytes_of_each_key_tile_per_thread_and_names_bad_input():
    """4 warps of 32 threads; trajectories per warp × H' × itemsize = 2048 bytes (clamped to 2..32)."""
    from lqgt.errors import ConfigError
    from lqgt.kernels.tf_loop import launch_shape

    for H, size in [(32, 4), (32, 8), (8, 8), (128, 4), (100, 4), (5, 8)]:
        block, warps = launch_shape(H, size)
        hp = 1 << (H - 1).bit_length()
        assert warps == 4 and (block // warps) * hp * size == 2048, (H, size)
    assert launch_shape(1, 4) == (128, 4) and launch_shape(2048, 8) == (8, 4)  # clamped at 32 and 2 per warp
    for bad in [(0, 4), (32, 0)]:
        with pytest.raises(ConfigError, match="window >= 1 and itemsize >= 1"):
            launch_shape(*bad)
