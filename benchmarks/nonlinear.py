"""Throughput of the batched EKF, UKF and Koopman filter against filterpy looped over trajectories.

For a nonlinear library plant (Van der Pol by default), measurements of ``B`` trajectories
of ``T`` steps are simulated once on the device; each filter then runs over them
(``init`` + ``T`` calls of ``step``, the simulator's protocol, current form) and the
throughput is trajectory-steps per second, ``B × T / wall time``. Each configuration is
warmed up on a few steps first; on CUDA the clock starts and stops after
``torch.cuda.synchronize()``.

Baselines, measured in the same run: filterpy's ``ExtendedKalmanFilter`` (for Van der
Pol with a native numpy model: RK4 and its exact Jacobian), ``UnscentedKalmanFilter`` (Merwe points, same parameters)
and ``KalmanFilter`` on the lifted model (the Koopman filter's equations), each looped
in Python over a few trajectories; a filterpy run costs the same per trajectory-step
whatever the batch, so its rate is measured once and the speed-up is ours / filterpy's.

Usage::

    python benchmarks/nonlinear.py                                # CPU (and CUDA if present)
    python benchmarks/nonlinear.py --devices cpu --batches 1e3 1e4 --horizon 50
    python benchmarks/nonlinear.py --devices cuda --batches 1e3 1e4 1e5 --dtype float32 float64
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from _common import free, timed

from lqgt import nonlinear_plants
from lqgt.estimators.ekf import ExtendedKalmanFilter
from lqgt.estimators.ukf import UnscentedKalmanFilter
from lqgt.koopman import Koopman, KoopmanFilter, Polynomial

FILTERS = ("ekf", "ukf", "koopman")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="batched EKF / UKF / Koopman filter throughput vs filterpy")
    ap.add_argument("--batches", nargs="+", type=float, default=[1e3, 1e4, 1e5], help="batch sizes (default 1e3 1e4 1e5)")
    ap.add_argument("--devices", nargs="+", default=None, help="torch devices (default: cpu, and cuda when available)")
    ap.add_argument("--dtype", nargs="+", default=["float64"], choices=["float32", "float64"], help="dtypes (default float64)")
    ap.add_argument("--horizon", type=int, default=100, help="steps per trajectory (default 100)")
    ap.add_argument("--plant", default="van_der_pol", choices=nonlinear_plants.NAMES, help="library plant")
    ap.add_argument("--degree", type=int, default=3, help="polynomial degree of the Koopman dictionary (default 3)")
    ap.add_argument("--filters", nargs="+", default=list(FILTERS), choices=FILTERS, help="filters to time")
    ap.add_argument("--baseline-trajectories", type=int, default=3, help="trajectories filterpy runs (default 3)")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats, best kept (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return ap.parse_args(argv)


def run_filter(est, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Run ``est`` over measurements ``y`` ``(T, B, p)`` and inputs ``u`` ``(T, B, m)``; return the last estimate."""
    T, B, _ = y.shape
    st, xh = est.init(B, device=y.device, dtype=y.dtype)
    zero = torch.zeros_like(u[0])
    with torch.no_grad():
        for t in range(T):
            st, xh = est.step(st, y[t], u[t - 1] if t else zero)
    return xh


def time_ours(est, y, u, repeats: int) -> float:
    """Best wall time of one full run (after a warm-up on a few steps)."""
    run_filter(est, y[:3], u[:3])
    return timed(lambda: run_filter(est, y, u), y.device, repeats, best=True)[0]


def numpy_model(plant, name: str):
    """``(f, h, F, H)`` as numpy functions of one trajectory, for the filterpy baselines.

    For Van der Pol a native numpy model: RK4 with the plant's substeps and its exact
    Jacobian (the variational equations carried through the RK4 stages), as a filterpy
    user would write it. For the other plants the torch model is called on one row, and
    Jacobians by ``torch.func.jacrev`` (slower: the baseline is then pessimistic).
    """
    if name == "van_der_pol" and plant.fc is not None:
        mu = float(plant.fc(torch.tensor([[0.0, 1.0]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))[0, 1])
        hstep, sub, eye = plant.dt / plant.substeps, plant.substeps, np.eye(2)

        def fc(x, uu):
            return np.array([x[1], mu * (1.0 - x[0] ** 2) * x[1] - x[0] + uu[0]])

        def Jc(x):
            return np.array([[0.0, 1.0], [-2.0 * mu * x[0] * x[1] - 1.0, mu * (1.0 - x[0] ** 2)]])

        def step(x, uu):
            J = eye
            for _ in range(sub):
                k1, J1 = fc(x, uu), Jc(x)
                x2 = x + 0.5 * hstep * k1
                k2, J2 = fc(x2, uu), Jc(x2) @ (eye + 0.5 * hstep * J1)
                x3 = x + 0.5 * hstep * k2
                k3, J3 = fc(x3, uu), Jc(x3) @ (eye + 0.5 * hstep * J2)
                x4 = x + hstep * k3
                k4, J4 = fc(x4, uu), Jc(x4) @ (eye + hstep * J3)
                x = x + hstep / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
                J = (eye + hstep / 6.0 * (J1 + 2 * J2 + 2 * J3 + J4)) @ J
            return x, J

        Hm = np.array([[1.0, 0.0]])
        f = lambda x, uu: step(x, np.atleast_1d(uu))[0]
        F = lambda x, uu: step(x, np.atleast_1d(uu))[1]
        h = lambda x: Hm @ x
        H = lambda x: Hm
        # the numpy model is the torch model
        xt, ut = torch.tensor([[0.7, -1.3]], dtype=torch.float64), torch.tensor([[0.4]], dtype=torch.float64)
        fx, Fx, _ = plant.jacobian_f(xt, ut)
        assert np.allclose(f(xt[0].numpy(), [0.4]), fx[0].numpy(), atol=1e-13)
        assert np.allclose(F(xt[0].numpy(), [0.4]), Fx[0].numpy(), atol=1e-12)
        return f, h, F, H

    def f(x, uu):
        return plant.f(torch.tensor(x)[None], torch.tensor(np.atleast_1d(uu))[None])[0].numpy()

    def h(x):
        return plant.h(torch.tensor(x)[None])[0].numpy()

    def F(x, uu):
        ut = torch.tensor(np.atleast_1d(uu))[None]
        return torch.func.jacrev(lambda z: plant.f(z[None], ut)[0])(torch.tensor(x)).numpy()

    def H(x):
        return torch.func.jacrev(lambda z: plant.h(z[None])[0])(torch.tensor(x)).numpy()

    return f, h, F, H


def filterpy_rates(plant, name, model, y: np.ndarray, u: np.ndarray, filters) -> dict[str, float]:
    """Trajectory-steps per second of filterpy on ``y`` ``(K, T, p)`` (looped over the K trajectories)."""
    from filterpy.kalman import ExtendedKalmanFilter as FEKF
    from filterpy.kalman import KalmanFilter as FKF
    from filterpy.kalman import MerweScaledSigmaPoints
    from filterpy.kalman import UnscentedKalmanFilter as FUKF

    f, h, F, H = numpy_model(plant, name)

    class EKF(FEKF):
        def predict_x(self, u=0):
            self.x = f(self.x, u)

    K, T, _ = y.shape
    rates = {}
    with torch.no_grad():
        if "ekf" in filters:
            t0 = time.perf_counter()
            for k in range(K):
                ekf = EKF(plant.n, plant.p, plant.m)
                ekf.x, ekf.P, ekf.Q, ekf.R = plant.m0.copy(), plant.P0.copy(), plant.W.copy(), plant.V.copy()
                for t in range(T):
                    if t:
                        ekf.F = F(ekf.x, u[k, t - 1])
                        ekf.predict(u=u[k, t - 1])
                    ekf.update(y[k, t], H, h)
            rates["ekf"] = K * T / (time.perf_counter() - t0)
        if "ukf" in filters:
            t0 = time.perf_counter()
            for k in range(K):
                pts = MerweScaledSigmaPoints(plant.n, alpha=1.0, beta=2.0, kappa=0.0)
                ukf = FUKF(plant.n, plant.p, plant.dt, hx=h, fx=lambda x, dt, u: f(x, u), points=pts)
                ukf.x, ukf.P, ukf.Q, ukf.R = plant.m0.copy(), plant.P0.copy(), plant.W.copy(), plant.V.copy()
                ukf.sigmas_f = pts.sigma_points(ukf.x, ukf.P)
                for t in range(T):
                    if t:
                        ukf.predict(u=u[k, t - 1])
                    ukf.update(y[k, t])
            rates["ukf"] = K * T / (time.perf_counter() - t0)
        if "koopman" in filters:
            kf_ref = KoopmanFilter(model)
            t0 = time.perf_counter()
            for k in range(K):
                kf = FKF(model.N, plant.p, plant.m)
                kf.x, kf.P = kf_ref.psi0.copy(), kf_ref.Ppsi0.copy()
                kf.F, kf.B, kf.H, kf.Q, kf.R = model.K, model.B, model.C, kf_ref.W, kf_ref.V
                for t in range(T):
                    if t:
                        kf.predict(u=u[k, t - 1])
                    kf.update(y[k, t])
            rates["koopman"] = K * T / (time.perf_counter() - t0)
    return rates


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    plant, _, _ = nonlinear_plants.get(args.plant)
    rng = np.random.default_rng(0)
    x0 = plant.m0 + rng.uniform(-2.0, 2.0, size=(200, plant.n))
    model = Koopman.from_plant_data(plant, Polynomial(plant.n, args.degree), x0=x0, horizon=50, u_std=0.5, seed=1)
    T = args.horizon
    print(f"# nonlinear filters: {plant!r}, Koopman {model.dictionary!r}, horizon {T}")
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))

    small = plant.sample(T - 1, batch=args.baseline_trajectories, seed=3)
    y_np = small.y.numpy()
    u_np = np.zeros((args.baseline_trajectories, T, plant.m))
    base = filterpy_rates(plant, args.plant, model, y_np, u_np, args.filters)
    print("# filterpy (one trajectory at a time): " + ", ".join(f"{k} {v:,.0f} steps/s" for k, v in base.items()))
    print()
    print("| device | dtype | batch | filter | wall (s) | trajectory-steps/s | × filterpy |")
    print("|---|---|---|---|---|---|---|")
    for dev_name in devices:
        dev = torch.device(dev_name)
        for dname in args.dtype:
            dt = getattr(torch, dname)
            for b in args.batches:
                B = int(b)
                try:
                    tr = plant.sample(T - 1, batch=B, seed=4, device=dev, dtype=dt)
                    y = tr.y.transpose(0, 1).contiguous()
                    u = torch.zeros(T, B, plant.m, device=dev, dtype=dt)
                    del tr
                    ests = {"ekf": ExtendedKalmanFilter(plant), "ukf": UnscentedKalmanFilter(plant),
                            "koopman": KoopmanFilter(model)}
                    for name in args.filters:
                        wall = time_ours(ests[name], y, u, args.repeats)
                        rate = B * T / wall
                        print(f"| {dev_name} | {dname} | {B:,} | {name} | {wall:.3f} | {rate:,.0f} | "
                              f"{rate / base[name]:,.0f} |", flush=True)
                except torch.cuda.OutOfMemoryError:
                    print(f"| {dev_name} | {dname} | {B:,} | OOM | | | |")
                finally:
                    y = u = None
                    free(dev)


if __name__ == "__main__":
    main()
