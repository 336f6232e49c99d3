"""Sample an analytic Gaussian mixture with DPM-Solver++ and compare to the RK45 ground truth."""

import torch

import diffode as dd


def main() -> None:
    torch.manual_seed(0)
    schedule = dd.DiscreteVP(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    mixture = dd.GaussianMixture(weights=[0.3, 0.7], means=[[1.0, -0.5, 0.25, 2.0], [-1.5, 0.5, 1.0, -0.75]],
                                 stds=[0.3, 0.6])
    model = mixture.predictor(schedule)
    x_T = torch.randn(16, 4, dtype=torch.float64)
    exact = dd.solve_reference(model, x_T, schedule.T, schedule.default_t_end)
    solver = dd.DPMSolver(model, algorithm="dpmsolver++")
    print(f"{'integrator':24s} {'NFE':>4s} {'RMSE vs RK45':>14s}")
    for method, order in (("multistep", 1), ("multistep", 2), ("multistep", 3), ("singlestep", 3)):
        for steps in (10, 20):
            x0 = solver.sample(x_T, steps=steps, order=order, method=method, skip_type="logSNR")
            rmse = (x0 - exact.x).square().mean().sqrt().item()
            print(f"{method + ' order ' + str(order):24s} {solver.last_solution.nfe:4d} {rmse:14.3e}")


if __name__ == "__main__":
    main()
