import lqgt
from lqgt.plot import cost_comparison, trajectory_bands

# A plant with its noise model and cost weights: two carts on springs, sampled at 10 Hz.
# (Build your own with lqgt.Plant(A, B, C, W=W, V=V, dt=dt) or lqgt.Plant.from_continuous.)
plant, Q, R = lqgt.plants.two_mass()

# Design: LQR gain K, Kalman predictor gain L and filter gain Lf, exact optimal cost.
design = lqgt.lqg(plant, Q, R)
print("K =", design.K.round(3), f"  LQG optimum J* = {design.cost:.4f}")

# Simulate 2000 closed loops per estimator, all on the same noise (common random numbers).
estimators = {
    "kalman (current)": lqgt.KalmanFilter(plant, "current"),
    "kalman (predictor)": lqgt.KalmanFilter(plant, "predictor"),
    "open-loop": lqgt.OpenLoopObserver(plant),
}
res = lqgt.simulate(plant, design.K, estimators, Q=Q, R=R, horizon=1000, batch=2000, burn_in=300, seed=0)

# Compare: Monte Carlo cost with its 95% CI against the exact cost of each (K, gain) loop.
exact = {}
for name, est in estimators.items():
    exact[name] = lqgt.lqg_cost(plant, Q, R, design.K, est.gain, form=est.form)
    lo, hi = res.cost_ci[name]
    print(f"{name:20s} exact {exact[name]:.4f}   MC {res.cost[name]:.4f}  [{lo:.4f}, {hi:.4f}]")

# Plot: mean ± 2σ of cart 1's position across the batch, and the costs.
ax = trajectory_bands(res, "x", index=0, ylabel="p1 (m)")
ax.figure.savefig("p1.png")
ax = cost_comparison(res.cost, res.cost_ci, exact, optimum=design.cost)
ax.figure.savefig("cost.png")
