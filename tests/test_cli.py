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
    (["converge", "--integrators", "ddim", "--orders", "4"], "order must be 1, 2 or 3"),
])
def test_user_mistakes_are_one_line_and_status_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("diffode: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv", [["demo", "--grid", "nope"], ["sample"], ["frobnicate"], ["demo", "--batch", "x"]])
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
