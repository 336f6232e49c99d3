"""The ``diffode`` command line: every command, its JSON output, its files, and its errors."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from diffode.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_names_every_kind_of_thing(capsys):
    code, out, err = run(capsys, "list")
    assert code == 0
    for word in ("integrators:", "dpmpp_2m", "dpm_adaptive_23", "schedules:", "discrete", "cosine",
                 "parameterizations:", "noise", "v_prediction", "grids:", "logSNR", "models:", "digits"):
        assert word in out
    code, out, _ = run(capsys, "list", "--json")
    doc = json.loads(out)
    assert set(doc) == {"integrators", "schedules", "parameterizations", "grids", "models"}
    assert "DPM-Solver++" in doc["integrators"]["dpmpp_3m"]


def test_no_command_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 0 and "demo" in out and "converge" in out


def test_demo_prints_the_table_and_writes_the_plot(capsys, tmp_path):
    plot = tmp_path / "demo.png"
    code, out, err = run(capsys, "demo", "--schedule", "linear", "--nfe", "5", "10", "--batch", "2",
                         "--integrators", "ddim", "dpmpp_2m", "dpmpp_adaptive_23", "--plot", str(plot), "-q")
    assert code == 0, err
    assert "| integrator | NFE 5" in out and "dpmpp_2m" in out and "adaptive step size" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert err == ""  # --quiet: no progress bars, no notes


def test_demo_default_model_and_schedule_json(capsys):
    code, out, _ = run(capsys, "demo", "--nfe", "5", "--batch", "2", "--integrators", "ddim", "dpmpp_3m",
                       "--no-plot", "--json", "-q")
    assert code == 0
    doc = json.loads(out)
    assert doc["model"] == "mixture" and doc["schedule"].startswith("DiscreteVP") and doc["plot"] is None
    records = {r["label"]: r for r in doc["records"]}
    assert records["ddim"]["nfe"] == 5 and records["dpmpp_3m"]["error"] > 0


def test_demo_digits_writes_a_digit_grid(capsys, tmp_path):
    grid = tmp_path / "digits.png"
    code, out, err = run(capsys, "demo", "--model", "digits", "--nfe", "5", "10", "--batch", "4",
                         "--integrators", "ddim", "dpmpp_2m", "--plot", str(grid), "-q")
    assert code == 0, err
    assert "digits network" in out
    assert grid.read_bytes()[:4] == b"\x89PNG"


def test_sample_writes_pt_and_is_reproducible(capsys, tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for path in (a, b):
        code, out, _ = run(capsys, "sample", "-o", str(path), "--nfe", "6", "--batch", "3", "--seed", "7",
                           "--schedule", "linear", "--integrator", "dpmpp_3m", "--option", "solver_type=taylor")
        assert code == 0
        assert "NFE 6" in out and "wall time" in out
    da, db = torch.load(a), torch.load(b)
    assert da["samples"].shape == (3, 3, 8, 8) and da["nfe"] == 6
    assert torch.equal(da["samples"], db["samples"])
    assert "solver_type='taylor'" in da["config"]
    code, out, _ = run(capsys, "sample", "-o", str(a), "--nfe", "6", "--batch", "3", "--seed", "8",
                       "--schedule", "linear", "--integrator", "dpmpp_3m")
    assert not torch.equal(torch.load(a)["samples"], db["samples"])


def test_sample_with_a_stochastic_sampler(capsys, tmp_path):
    """--seed sets x_T and the sampler's draws: the same seed gives the same samples, another seed others."""
    paths = [tmp_path / f"{i}.pt" for i in range(3)]
    for path, seed in zip(paths, ("0", "0", "1")):
        code, out, err = run(capsys, "sample", "-o", str(path), "--integrator", "sde_dpmpp_2m", "--seed", seed,
                             "--nfe", "8", "--batch", "2", "--schedule", "linear")
        assert code == 0, err
        assert "NFE 8" in out and "SDEDPMSolverMultistep" in out
    a, b, c = (torch.load(p)["samples"] for p in paths)
    assert torch.equal(a, b) and not torch.equal(a, c)
    code, _, err = run(capsys, "sample", "-o", str(paths[0]), "--integrator", "sde_dpmpp_2m", "--option", "eta=0.0",
                       "--nfe", "8", "--batch", "2", "--schedule", "linear")
    assert code == 0, err
    code, _, _ = run(capsys, "sample", "-o", str(paths[1]), "--integrator", "dpmpp_2m", "--nfe", "8", "--batch", "2",
                     "--schedule", "linear")
    torch.testing.assert_close(torch.load(paths[0])["samples"], torch.load(paths[1])["samples"])  # eta=0: the ODE
    code, out, _ = run(capsys, "list")
    for name in ("euler_maruyama", "pc_langevin", "ddpm", "sde_dpmpp_1", "sde_dpmpp_2m", "sde_dpmpp_3m"):
        assert name in out


def test_sample_npz_json_adaptive_and_denoise(capsys, tmp_path):
    path = tmp_path / "s.npz"
    code, out, _ = run(capsys, "sample", "-o", str(path), "--integrator", "dpmpp_adaptive_23", "--batch", "2",
                       "--schedule", "linear", "--rtol", "0.1", "--denoise-to-zero", "--json", "--dtype", "float64")
    assert code == 0
    doc = json.loads(out)
    with np.load(path) as data:
        assert data["samples"].shape == (2, 3, 8, 8) and data["samples"].dtype == np.float64
        assert int(data["nfe"]) == doc["nfe"] > 1
    assert doc["denoise_to_zero"] is True and doc["path"] == str(path)


def test_sample_user_factories(capsys, tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch
        import diffode as dd

        class Net(torch.nn.Module):
            sample_shape = (2, 4)
            def forward(self, x, t):
                return 0.1 * x

        def network():
            return Net()

        def bare():
            return lambda x, t: 0.1 * x

        def predictor():
            m = dd.GaussianMixture([1.0], [[0.5, -0.5]], [0.3])
            p = m.predictor(dd.LinearVP())
            p.sample_shape = (2,)
            return p
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    out_path = tmp_path / "x.pt"
    code, out, err = run(capsys, "sample", "-o", str(out_path), "--model", "my_models:network", "--nfe", "4",
                         "--batch", "5")
    assert code == 0, err
    assert torch.load(out_path)["samples"].shape == (5, 2, 4)
    code, _, err = run(capsys, "sample", "-o", str(out_path), "--model", "my_models:bare", "--nfe", "4")
    assert code == 2 and "pass --shape" in err
    code, _, err = run(capsys, "sample", "-o", str(out_path), "--model", "my_models:bare", "--nfe", "4",
                       "--shape", "3", "--parameterization", "v", "--schedule", "cosine")
    assert code == 0, err
    code, _, err = run(capsys, "sample", "-o", str(out_path), "--model", "my_models:predictor", "--nfe", "4")
    assert code == 0, err
    assert torch.load(out_path)["samples"].shape == (16, 2)


def test_sample_checks_for_non_finite_states_by_default(capsys, tmp_path, monkeypatch):
    (tmp_path / "nan_models.py").write_text(textwrap.dedent("""
        import torch

        def exploding():
            def net(x, t):
                out = 0.1 * x
                out[1] = float("nan")
                return out
            return net
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["sample", "-o", str(tmp_path / "x.pt"), "--model", "nan_models:exploding", "--nfe", "4", "--shape", "3",
            "--batch", "3"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith("diffode: error: ") and "non-finite" in err and "[1]" in err
    assert not (tmp_path / "x.pt").exists()
    code, _, err = run(capsys, *argv, "--no-check-finite")
    assert code == 0, err


@pytest.mark.parametrize("argv,message", [
    (["sample", "-o", "x.txt"], "--out must end in .pt or .npz"),
    (["sample", "-o", "x.pt", "--integrator", "dpmpp_9m"], "unknown integrator 'dpmpp_9m'"),
    (["sample", "-o", "x.pt", "--option", "bogus=1"], "unknown option bogus"),
    (["sample", "-o", "x.pt", "--option", "novalue"], "--option expects KEY=VALUE"),
    (["sample", "-o", "x.pt", "--model", "nosuchmodule:f"], "cannot import 'nosuchmodule'"),
    (["sample", "-o", "x.pt", "--model", "json:nosuchattr"], "has no attribute 'nosuchattr'"),
    (["sample", "-o", "x.pt", "--model", "weird"], "unknown model 'weird'"),
    (["sample", "-o", "x.pt", "--model", "digits", "--schedule", "linear"], "its own schedule"),
    (["sample", "-o", "x.pt", "--nfe", "0"], "--nfe must be >= 1"),
    (["demo", "--nfe", "0"], "--nfe must be integers >= 1"),
    (["converge", "--steps", "24"], "at least two step counts"),
    (["converge", "--integrators", "ddim", "--orders", "5"], "order must be 1, 2, 3 or 4"),
    (["likelihood", "--probes", "3"], "--probes 3 needs --divergence hutchinson"),
    (["likelihood", "--data", "x.txt"], "--data must be a .pt or .npz file"),
    (["likelihood", "--model", "torch.nn:Identity", "--shape", "2"], "pass --data FILE"),
    (["sample"], "give either -o FILE (one batch) or --out-dir FOLDER with --num-samples"),
])
def test_user_mistakes_are_one_line_and_status_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("diffode: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv", [["demo", "--grid", "nope"], ["frobnicate"], ["demo", "--batch", "x"]])
def test_argument_errors_are_one_line_too(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("diffode") and ": error: " in err and err.count("\n") == 1


def test_converge_gates_on_the_tolerance(capsys, tmp_path):
    argv = ["converge", "--schedule", "linear", "--integrators", "ddim", "dpmpp_2m", "--steps", "24", "48", "96",
            "--batch", "2", "--no-plot", "-q"]
    code, out, _ = run(capsys, *argv)
    assert code == 0, out
    assert "slope" in out and "every fitted order is within 0.25" in out
    code, out, _ = run(capsys, *argv, "--tolerance", "1e-9", "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["passed"] is False and {r["label"] for r in doc["results"]} == {"ddim", "dpmpp_2m"}


def test_converge_orders_and_plot(capsys, tmp_path):
    plot = tmp_path / "c.png"
    code, out, err = run(capsys, "converge", "--schedule", "linear", "--integrators", "dpmpp_2s", "--orders", "1", "2",
                         "--steps", "12", "24", "48", "--batch", "2", "--plot", str(plot), "--json", "-q")
    assert code == 0, err
    doc = json.loads(out)
    assert [(r["label"], r["order"]) for r in doc["results"]] == [("dpmpp_2s[order=1]", 1), ("dpmpp_2s[order=2]", 2)]
    assert doc["results"][1]["nfe"] == [24, 48, 96]
    assert plot.exists()


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "diffode", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("diffode ")


def test_a_closed_pipe_is_not_an_error():
    # The reader is gone before diffode writes (as with `diffode list | head -0`): exit 0, no message.
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "diffode", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert b"Broken pipe" not in err and b"error" not in err


# -- issue 12 --------------------------------------------------------------------------------------


def test_converge_says_inconclusive_with_status_3_before_the_asymptotic_regime(capsys):
    code, out, _ = run(capsys, "converge", "--integrators", "dpmpp_2m", "dpmpp_3m", "--steps", "24", "48", "96", "192",
                       "--no-plot")
    assert code == 3, out
    assert "FAILED" not in out and "INCONCLUSIVE: dpmpp_2m, dpmpp_3m" in out
    assert "not in the asymptotic regime at these steps" in out and "take larger step counts" in out
    code, out, _ = run(capsys, "converge", "--integrators", "dpmpp_2m", "--steps", "24", "48", "96", "192",
                       "--no-plot", "--json")
    doc = json.loads(out)
    assert code == 3 and doc["status"] == 3 and doc["passed"] is False
    assert doc["results"][0]["verdict"] == "inconclusive" and doc["reference_error"] < 1e-8


def test_converge_fails_a_second_order_method_that_claims_order_3(capsys, monkeypatch):
    from diffode.integrators import registry
    from tests.test_study import ReferenceWeighted3M

    monkeypatch.setitem(registry.INTEGRATORS, "wrong_3m", registry.Entry(lambda: ReferenceWeighted3M(3, "data"),
                                                                          "claims order 3, is order 2"))
    code, out, _ = run(capsys, "converge", "--integrators", "wrong_3m", "dpmpp_3m", "--steps", "96", "192", "384",
                       "768", "--no-plot", "--batch", "2")
    assert code == 1, out
    assert "FAILED: wrong_3m (slope 2.0" in out and "dpmpp_3m" not in out.split("FAILED")[-1]


def test_converge_passes_where_the_errors_are_asymptotic_and_says_which_steps(capsys):
    code, out, _ = run(capsys, "converge", "--integrators", "dpmpp_2m", "dpmpp_3m", "--steps", "96", "192", "384",
                       "768", "--no-plot", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["status"] == 0, doc
    for r in doc["results"]:
        assert r["verdict"] == "passed" and r["used"][-1] == 768 and abs(r["slope"] - r["order"]) < 0.25


def test_sample_validates_its_times_as_the_python_api_does(capsys, tmp_path):
    import diffode as dd
    from diffode.models.builtin import load_model

    _, model = load_model("mixture")
    with pytest.raises(ValueError) as api:
        dd.DPMSolver(model).sample(torch.zeros(1, 3, 8, 8, dtype=torch.float64), steps=5, t_start=0.1, t_end=0.5)
    out = tmp_path / "a.pt"
    code, _, err = run(capsys, "sample", "-o", str(out), "--t-start", "0.1", "--t-end", "0.5")
    assert code == 2 and err == f"diffode: error: {api.value}\n" and not out.exists()
    code, _, err = run(capsys, "sample", "-o", str(out), "--t-end", "0")
    assert code == 2 and "t_end must lie in [0.001, 1]" in err


def test_sample_refuses_a_folder_that_does_not_exist(capsys, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "a.pt"
    code, _, err = run(capsys, "sample", "-o", str(target))
    assert code == 2 and "does not exist" in err and "create it first" in err
    assert not (tmp_path / "no").exists()
    code, _, err = run(capsys, "converge", "--plot", str(target.with_suffix(".png")), "--steps", "4", "8", "-q")
    assert code == 2 and "--plot file" in err and not (tmp_path / "no").exists()


def test_list_prints_plain_text_not_latex(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0 and "$" not in out and "\\" not in out
    assert "x0_hat = (x - sigma_t eps_hat)/alpha_t" in out


def test_no_progress_bar_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    from diffode.cli import Reporter, build_parser

    _, _, err = run(capsys, "converge", "--integrators", "ddim", "--steps", "8", "16", "32", "--no-plot")
    assert "convergence:" not in err and "\r" not in err  # capsys's stderr is no terminal, as a log file
    args = build_parser().parse_args(["demo"])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert Reporter(args).progress
    args.quiet = True
    assert not Reporter(args).progress


def test_one_default_grid_for_demo_sample_and_converge():
    from diffode.cli import build_parser

    parser = build_parser()
    grids = {cmd: parser.parse_args([cmd, *extra]).grid for cmd, extra in
             (("demo", []), ("sample", ["-o", "x.pt"]), ("converge", []))}
    assert set(grids.values()) == {"logSNR"}, grids


def test_parameterization_is_refused_for_a_built_in_model(capsys, tmp_path):
    code, _, err = run(capsys, "sample", "-o", str(tmp_path / "a.pt"), "--parameterization", "v")
    assert code == 2 and "drop --parameterization v" in err


def test_npz_and_pt_carry_the_same_metadata(capsys, tmp_path):
    assert run(capsys, "sample", "-o", str(tmp_path / "a.pt"), "--nfe", "5", "--batch", "2")[0] == 0
    assert run(capsys, "sample", "-o", str(tmp_path / "a.npz"), "--nfe", "5", "--batch", "2")[0] == 0
    pt = torch.load(tmp_path / "a.pt")
    with np.load(tmp_path / "a.npz") as npz:
        assert set(npz.files) == set(pt)
        assert npz["integrator"] == pt["integrator"] and float(npz["t_end"]) == pt["t_end"]
        assert np.array_equal(npz["samples"], pt["samples"].numpy())


def test_converge_on_digits_runs_the_demo_integrators_by_default(capsys, monkeypatch):
    from diffode import study
    from diffode.cli import DIGITS_INTEGRATORS

    seen = {}
    monkeypatch.setattr(study, "ground_truth", lambda model, x, *a, **k: x)
    monkeypatch.setattr(study, "reference_error", lambda *a, **k: 0.0)
    monkeypatch.setattr(study, "convergence_study", lambda model, x, exact, integrators, *a, **k:
                        seen.setdefault("names", list(integrators)) and [])
    code, _, _ = run(capsys, "converge", "--model", "digits", "--no-plot", "--batch", "1")
    assert code == 0 and seen["names"] == list(DIGITS_INTEGRATORS)


PATHS = ["ve", "edm", "subvp", "flow"]


def test_the_paths_are_schedules_of_every_command(capsys, tmp_path):
    code, out, _ = run(capsys, "list", "--json")
    assert set(PATHS) <= set(json.loads(out)["schedules"])
    code, out, err = run(capsys, "demo", "--schedule", "edm", "--nfe", "5", "--batch", "2", "--integrators", "ddim",
                         "--no-plot", "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["schedule"].startswith("EDM(")
    path = tmp_path / "flow.pt"
    code, _, err = run(capsys, "sample", "-o", str(path), "--schedule", "flow", "--nfe", "4", "--batch", "2")
    assert code == 0, err
    assert torch.load(path)["schedule"].startswith("FlowMatching(")


@pytest.mark.parametrize("schedule", PATHS)
def test_converge_fits_the_orders_on_every_path(capsys, schedule):
    code, out, err = run(capsys, "converge", "--schedule", schedule, "--integrators", "ddim", "dpm_2s",
                         "--steps", "24", "48", "96", "--batch", "2", "--no-plot", "--json", "-q")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["passed"] and doc["schedule"].lower().startswith({"subvp": "subvp", "flow": "flowmatching"}.get(
        schedule, schedule))
    slopes = {r["label"]: r["slope"] for r in doc["results"]}
    assert abs(slopes["ddim"] - 1) < 0.1 and abs(slopes["dpm_2s"] - 2) < 0.25


def _gaussian_factories(tmp_path, monkeypatch):
    (tmp_path / "lik_models.py").write_text(textwrap.dedent("""
        import diffode as dd

        MIXTURE = dd.GaussianMixture([0.4, 0.6], [[1.0, -0.5], [-1.0, 0.5]], [0.5, 0.3])

        def network():
            net = MIXTURE.network(dd.LinearVP())      # takes the continuous time, as wrap feeds LinearVP
            net.sample_shape = (2,)
            return net

        def predictor():
            p = MIXTURE.predictor(dd.VE())
            p.sample_shape = (2,)
            return p
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module("lik_models").MIXTURE


def test_likelihood_of_a_user_network_matches_the_exact_density(capsys, tmp_path, monkeypatch):
    mixture = _gaussian_factories(tmp_path, monkeypatch)
    x = mixture.sample(3, generator=torch.Generator().manual_seed(1))
    data = tmp_path / "x.pt"
    torch.save({"samples": x}, data)
    code, out, err = run(capsys, "likelihood", "--model", "lik_models:network", "--schedule", "linear",
                         "--data", str(data), "--rtol", "1e-6", "--atol", "1e-6", "--json", "-q")
    assert code == 0, err
    doc = json.loads(out)
    exact = mixture.log_prob(x, 1e-3, dd_linear()).numpy()
    # The prior N(0, I) misses the marginal at T = 1 by its mean alpha_T mu (alpha_T = 0.0067): ~1.5e-3 nats.
    np.testing.assert_allclose(doc["log_p"], exact, atol=3e-3)
    log_p = np.array(doc["log_p"])
    np.testing.assert_allclose(doc["bits_per_dim"], -log_p / (2 * np.log(2)) - 1 + 8, rtol=1e-12)
    assert doc["dims"] == 2 and doc["exact_log_p"] is None and doc["stderr"] is None


def dd_linear():
    import diffode as dd

    return dd.LinearVP()


def test_likelihood_hutchinson_on_analytic_models(capsys, tmp_path, monkeypatch):
    _gaussian_factories(tmp_path, monkeypatch)
    code, out, err = run(capsys, "likelihood", "--model", "lik_models:predictor", "--divergence", "hutchinson",
                         "--probes", "4", "--batch", "3", "--t-end", "0.05", "--json", "-q")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schedule"].startswith("VE(") and doc["t_end"] == 0.05 and doc["probes"] == 4
    error = np.abs(np.array(doc["log_p"]) - np.array(doc["exact_log_p"]))
    assert (error < 4 * np.array(doc["stderr"]) + 1e-3).all()
    code, out, err = run(capsys, "likelihood", "--schedule", "flow", "--batch", "1", "--divergence", "hutchinson",
                         "--rtol", "1e-3", "--atol", "1e-3", "-q")
    assert code == 0, err
    assert "exact log p" in out and "mean bits/dim" in out and "FlowMatching" in out


# -- many samples (issue 15) -----------------------------------------------------------------------


def test_sample_many_writes_resumable_shards(capsys, tmp_path):
    from diffode.generate import load_samples, verify

    folder = tmp_path / "many"
    argv = ["sample", "--out-dir", str(folder), "--num-samples", "5", "--shard-size", "2", "--batch", "2",
            "--nfe", "4", "--json", "-q"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["shards_done"] == [0, 1, 2] and doc["samples"] == 5
    assert load_samples(str(folder)).shape == (5, 3, 8, 8) and verify(str(folder)) == []
    code, out, _ = run(capsys, *argv)
    assert code == 0 and json.loads(out)["shards_skipped"] == [0, 1, 2]
    code, _, err = run(capsys, *argv[:-2], "--integrator", "dpmpp_3m", "--json")
    assert code == 2 and "another configuration" in err
    code, _, err = run(capsys, "sample", "--num-samples", "5", "-o", str(tmp_path / "x.pt"))
    assert code == 2 and "--num-samples writes shards to --out-dir" in err


@pytest.mark.slow
def test_digits_demo_says_which_runs_diverged(capsys, tmp_path):
    # DPM-Solver-3 in noise form at 5 NFE: two steps of h ~ 5 in lambda, error 16.8 (the reference
    # implementation gives the same); the table and the image say so.
    code, out, _ = run(capsys, "demo", "--model", "digits", "--integrators", "dpm_3s", "dpmpp_3s", "--nfe", "5",
                       "--batch", "8", "--plot", str(tmp_path / "digits.png"))
    assert code == 0
    assert "diverged" in out.split("dpm_3s ")[1].splitlines()[0]
    assert "diverged" not in out.split("dpmpp_3s ")[1].splitlines()[0]
    assert "diverged (error above the samples' RMS" in out and "dpm_3s at NFE 5" in out
