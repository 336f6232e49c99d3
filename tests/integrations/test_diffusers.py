"""DiffodeScheduler: the diffusers scheduler contract, agreement with DPMSolverMultistepScheduler,
and real pipelines built locally from tiny random models (no downloads)."""

import itertools
import json
import string
import warnings

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

import diffode as dd  # noqa: E402
from diffode.integrations import LOWER_ORDER_FINAL_BELOW  # noqa: E402
from diffode.integrations.diffusers import DiffodeScheduler, supported_integrators  # noqa: E402
from diffode.models import dynamic_thresholding  # noqa: E402



def toy_model(scheduler, prediction_type):
    """A smooth stand-in for a trained network at integer timestep k: the exact noise prediction
    for data N(0, 0.5^2 I), perturbed, returned as the scheduler's prediction type (float32)."""

    def model(x, k):
        acp = scheduler.alphas_cumprod[int(k)]
        alpha, sigma = acp.sqrt(), (1 - acp).sqrt()
        eps = sigma * x / (0.25 * acp + 1 - acp) + 0.1 * torch.tanh(x)
        x0 = (x - sigma * eps) / alpha
        return {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0}[prediction_type]

    return model


def run(scheduler, x, steps, prediction_type, **kwargs):
    scheduler.set_timesteps(steps, **kwargs)
    model = toy_model(scheduler, prediction_type)
    learned_variance = scheduler.config.get("variance_type") in ("learned", "learned_range")
    for t in scheduler.timesteps:
        out = model(x, t)
        if learned_variance:  # a variance prediction after the mean's channels, for the scheduler to drop
            out = torch.cat([out, torch.full_like(out, 7.0)], dim=1)
        x = scheduler.step(out, t, x).prev_sample
    return x


def x_T(shape=(2, 3, 4, 4), seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


CONFIGS = list(itertools.product(["linear", "scaled_linear", "squaredcos_cap_v2"], ["epsilon", "v_prediction", "sample"],
                                 ["linspace", "leading", "trailing"], ["zero", "sigma_min"]))


@pytest.mark.parametrize("beta_schedule, prediction_type, spacing, final", CONFIGS)
def test_dpmpp_2m_matches_diffusers(beta_schedule, prediction_type, spacing, final):
    """DPM-Solver++ 2M (and its first-order steps) equals DPMSolverMultistepScheduler to float32 round-off."""
    for steps, solver_type, lower_order_final in ((1, "midpoint", True), (4, "heun", True), (12, "midpoint", True),
                                                  (16, "midpoint", True), (12, "heun", False)):
        config = dict(beta_schedule=beta_schedule, prediction_type=prediction_type, timestep_spacing=spacing,
                      final_sigmas_type=final, solver_type=solver_type, lower_order_final=lower_order_final,
                      steps_offset=1)
        reference = DPMSolverMultistepScheduler(**config)
        ours = DiffodeScheduler.from_config(reference.config)
        assert (ours.integrator.order, ours.integrator.predict) == (2, "data")
        expected = run(reference, x_T(), steps, prediction_type)
        got = run(ours, x_T(), steps, prediction_type)
        assert torch.equal(ours.timesteps, reference.timesteps)
        assert (got - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item()), (steps, solver_type)


def assert_agrees(got, expected, rtol=1e-5):
    """Equal to float32 round-off, relative to the sample's magnitude (and never NaN)."""
    assert torch.isfinite(got).all() and torch.isfinite(expected).all()
    error = (got - expected).abs().max().item()
    assert error <= rtol * max(1.0, expected.abs().max().item()), error


SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.mark.parametrize("reference_config", [
    {"solver_order": 1},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    {"rescale_betas_zero_snr": True, **SD, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
    {"use_karras_sigmas": True, **SD},
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "solver_type": "heun", "euler_at_final": True},
    {"use_karras_sigmas": True, "thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
    {"use_lu_lambdas": True, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    {"use_lu_lambdas": True, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"},
    {"use_exponential_sigmas": True, **SD, "prediction_type": "v_prediction"},
    {"thresholding": True, "prediction_type": "sample"},
    {"thresholding": True, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "sample_max_value": 2.0},
    {"euler_at_final": True, "final_sigmas_type": "sigma_min", "solver_type": "heun"},
    {"lower_order_final": False, "final_sigmas_type": "sigma_min"},
    {"variance_type": "learned_range"},
], ids=lambda config: ",".join(f"{k}={v}" for k, v in config.items()))
def test_configuration_keys_are_honoured(reference_config):
    """Every key of DPMSolverMultistepScheduler's configuration means what it means to diffusers:
    from its configuration alone, DiffodeScheduler lays out the same timesteps and computes the
    same samples, to float32 round-off (orders 1 and 2, both algorithm types, every grid)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers deprecates algorithm_type="dpmsolver"
        reference = DPMSolverMultistepScheduler(**reference_config)
    ours = DiffodeScheduler.from_config(reference.config)
    assert ours.integrator.order == reference.config.solver_order
    assert ours.integrator.predict == {"dpmsolver++": "data", "dpmsolver": "noise"}[reference.config.algorithm_type]
    prediction_type = reference.config.prediction_type
    # The cosine schedule's first alpha is 2e-4 (x0 = (x - sigma eps) / alpha amplifies float32 round-off).
    rtol = 3e-5 if reference.config.beta_schedule == "squaredcos_cap_v2" else 1e-5
    for steps in (3, 10, 25):
        expected = run(reference, x_T(), steps, prediction_type)
        got = run(ours, x_T(), steps, prediction_type)
        assert torch.equal(ours.timesteps, reference.timesteps), steps
        assert_agrees(got, expected, rtol)


def test_the_keys_change_the_result():
    """The issue's symptom: each key changes the sample (by far more than round-off)."""
    baseline = run(DiffodeScheduler(), x_T(), 10, "epsilon")
    for key, value in (("use_karras_sigmas", True), ("use_lu_lambdas", True), ("thresholding", True),
                       ("solver_order", 1), ("solver_order", 3), ("algorithm_type", "dpmsolver")):
        assert (run(DiffodeScheduler(**{key: value}), x_T(), 10, "epsilon") - baseline).abs().max() > 1e-3, key
    sigma_min = dict(final_sigmas_type="sigma_min")
    baseline = run(DiffodeScheduler(**sigma_min), x_T(), 20, "epsilon")
    assert (run(DiffodeScheduler(**sigma_min, euler_at_final=True), x_T(), 20, "epsilon") - baseline).abs().max() > 1e-4


def test_a_zero_length_last_step_leaves_the_state():
    """With final_sigmas_type="sigma_min" a Karras grid's last step has length 0. diffusers' "heun"
    second-order step (15 steps and more) divides 0 by 0 there; the scheduler keeps the state, which
    is what diffusers gives with a first-order last step."""
    config = dict(use_karras_sigmas=True, final_sigmas_type="sigma_min", solver_type="heun")
    got = run(DiffodeScheduler(**config), x_T(), 20, "epsilon")
    expected = run(DPMSolverMultistepScheduler(**config, euler_at_final=True), x_T(), 20, "epsilon")
    assert_agrees(got, expected)


def test_bounded_dynamic_thresholding_is_diffusers_thresholding():
    x0 = 3.0 * x_T(shape=(4, 3, 8, 8), seed=2)
    x0[0] *= 0.2  # one sample whose quantile is below 1
    for ratio, max_value in ((0.995, 1.0), (0.9, 1.5), (0.5, 100.0)):
        reference = DPMSolverMultistepScheduler(thresholding=True, dynamic_thresholding_ratio=ratio,
                                                sample_max_value=max_value)
        torch.testing.assert_close(dynamic_thresholding(x0, ratio, 1.0, max_scale=max_value),
                                   reference._threshold_sample(x0))
    # diffusers' default (sample_max_value=1) is clipping to [-1, 1]; the reference DPM-Solver's
    # dynamic thresholding (bounded below only) is not.
    assert torch.equal(dynamic_thresholding(x0, 0.995, 1.0, max_scale=1.0), x0.clamp(-1, 1))
    assert (dynamic_thresholding(x0, 0.995, 1.0) - x0.clamp(-1, 1)).abs().max() > 0.1


def test_order_3_is_diffodes_exact_third_order_method():
    """solver_order=3 runs diffode's 3M: on the same Karras grid and model calls it is diffode's own
    solve with "dpmpp_3m", and it differs from diffusers' solver_order=3 (whose last term has half
    the weight) once a third-order step is taken."""
    reference = DPMSolverMultistepScheduler(solver_order=3, use_karras_sigmas=True)
    scheduler = DiffodeScheduler.from_config(reference.config)
    assert (scheduler.integrator.order, scheduler.integrator.predict) == (3, "data")
    steps = 12
    x = x_T(dtype=torch.float64)
    got = run(scheduler, x, steps, "epsilon")
    assert scheduler.step_orders == [1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 2, 1]
    network = toy_model(scheduler, "epsilon")
    timestep_at = dict(zip(scheduler.times, scheduler.timesteps.tolist()))
    model = dd.wrap(lambda x, t: network(x, timestep_at[float(t[0])]), scheduler.schedule, "noise",
                    time_input="continuous")
    solution = dd.solve(model, x, dd.get_integrator("dpmpp_3m"), scheduler.times, orders=scheduler.step_orders[:-1])
    torch.testing.assert_close(got, model.data(solution.x, scheduler.times[-1]), rtol=1e-12, atol=1e-12)
    assert_agrees(run(scheduler, x_T(), 3, "epsilon"), run(reference, x_T(), 3, "epsilon"))  # orders 1, 2, 1
    assert (run(scheduler, x_T(), steps, "epsilon") - run(reference, x_T(), steps, "epsilon")).abs().max() > 1e-4


@pytest.mark.parametrize("integrator", supported_integrators())
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_scheduler_is_diffodes_own_sampler(integrator, final):
    """Step by step, the scheduler runs the integrator as diffode's solve() does (float64), exactly."""
    scheduler = DiffodeScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                 integrator=integrator, final_sigmas_type=final)
    x = x_T(dtype=torch.float64)
    got = run(scheduler, x, 9, "epsilon")
    network = toy_model(scheduler, "epsilon")
    model = dd.wrap(lambda x, t_input: network(x, round(float(t_input[0]))), scheduler.schedule, "noise")
    times = scheduler.times
    orders = dd.get_integrator(integrator).step_orders(9, LOWER_ORDER_FINAL_BELOW)
    assert scheduler.step_orders == orders
    if final == "zero":
        solution = dd.solve(model, x, dd.get_integrator(integrator), times, orders=orders[:-1])
        expected = model.data(solution.x, times[-1])
    else:
        expected = dd.solve(model, x, dd.get_integrator(integrator), times, orders=orders).x
    assert torch.equal(got, expected)
    assert times[0] == 1.0 and (final == "zero" or times[-1] == 1e-3)


def test_scheduler_contract_and_config(tmp_path):
    scheduler = DiffodeScheduler(integrator="dpmpp_3m", solver_type="heun", timestep_spacing="trailing")
    assert scheduler.order == 1 and scheduler.init_noise_sigma == 1.0 and len(scheduler) == 1000
    assert scheduler.integrator.solver_type == "taylor"
    scheduler.set_timesteps(5, device="cpu")
    assert scheduler.timesteps.dtype == torch.int64 and scheduler.timesteps.tolist() == [999, 799, 599, 399, 199]
    x = x_T()
    assert scheduler.scale_model_input(x, 999) is x
    # save_pretrained / from_pretrained keep the configuration.
    scheduler.save_pretrained(tmp_path)
    loaded = DiffodeScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    assert torch.equal(run(loaded, x_T(), 5, "epsilon"), run(scheduler, x_T(), 5, "epsilon"))
    # add_noise is the training forward process, as DDPMScheduler's.
    ddpm = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ours = DiffodeScheduler.from_config(ddpm.config)
    noise, steps = x_T(seed=1), torch.tensor([0, 999])
    assert torch.allclose(ours.add_noise(x, noise, steps), ddpm.add_noise(x, noise, steps), atol=1e-6)
    # Configurations of other schedulers load (their foreign keys are ignored).
    for other in (PNDMScheduler(steps_offset=1, skip_prk_steps=True), UniPCMultistepScheduler(solver_type="bh2")):
        converted = DiffodeScheduler.from_config(other.config)
        assert converted.integrator.solver_type == "dpmsolver"
        assert converted.config.beta_schedule == other.config.beta_schedule
    # Custom timesteps, and starting part-way (img2img pipelines call set_begin_index).
    scheduler = DiffodeScheduler()
    scheduler.set_timesteps(timesteps=[900, 600, 300, 100])
    assert scheduler.times == [0.901, 0.601, 0.301, 0.101]
    scheduler.set_begin_index(2)
    out = scheduler.step(x, 300, x).prev_sample
    assert scheduler.step_index == 3 and out.shape == x.shape


def test_half_precision_states_are_integrated_in_float32():
    reference = run(DiffodeScheduler(), x_T(), 6, "epsilon")
    scheduler = DiffodeScheduler()
    scheduler.set_timesteps(6)
    model = toy_model(scheduler, "epsilon")
    x = x_T().to(torch.bfloat16)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x.float(), t).to(torch.bfloat16), t, x).prev_sample
        assert x.dtype == torch.bfloat16
    assert (x.float() - reference).abs().max() < 0.1


def test_bad_input():
    with pytest.raises(ValueError, match="one model call per step.*dpmpp_2m"):
        DiffodeScheduler(integrator="dpmpp_2s")
    for name in ("dpmpp_adaptive_23", "dpmpp_3m_sw"):
        with pytest.raises(ValueError, match="one model call per step"):
            DiffodeScheduler(integrator=name)
    with pytest.raises(ValueError, match="unknown integrator"):
        DiffodeScheduler(integrator="euler")
    with pytest.raises(ValueError, match="prediction_type"):
        DiffodeScheduler(prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="timestep_spacing"):
        DiffodeScheduler(timestep_spacing="karras")
    with pytest.raises(ValueError, match="beta_schedule"):
        DiffodeScheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="solver_type"):
        DiffodeScheduler(solver_type="rk4")
    scheduler = DiffodeScheduler()
    x = x_T()
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 999, x)
    with pytest.raises(ValueError, match="exactly one"):
        scheduler.set_timesteps()
    with pytest.raises(ValueError, match="strictly decreasing"):
        scheduler.set_timesteps(timesteps=[100, 500])
    with pytest.raises(ValueError, match=r"outside \[0, 999\]"):
        scheduler.set_timesteps(timesteps=[1000, 10])
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="variance"):
        scheduler.step(torch.zeros(2, 6, 4, 4), scheduler.timesteps[0], x)
    with pytest.raises(ValueError, match="not one of this run's timesteps"):
        scheduler.step(x, 123, x)
    for t in scheduler.timesteps:
        x = scheduler.step(x, t, x).prev_sample
    with pytest.raises(ValueError, match="all 2 steps"):
        scheduler.step(x, 0, x)


# -- real pipelines from tiny random models ---------------------------------------------------------


def unet_call(unet, **kwargs):
    return lambda x, t_input, *condition: unet(x, t_input, *condition, **kwargs).sample


def test_unconditional_pipeline():
    from diffusers import DDPMPipeline, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
    # A "sample"-predicting model keeps the output in the image range, so the pipeline's clamp hides little.
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type="sample"))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DiffodeScheduler.from_config(pipe.scheduler.config)
    steps = 6
    images = pipe(batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    # diffode's own sampler on the same network and noise.
    scheduler = pipe.scheduler
    model = dd.wrap(unet_call(unet), scheduler.schedule, "data")
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    integrator = dd.get_integrator("dpmpp_2m")
    with torch.no_grad():
        solution = dd.solve(model, noise, integrator, scheduler.times, orders=scheduler.step_orders[:-1])
        sample = model.data(solution.x, scheduler.times[-1])
    expected = (sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    inside = ((expected > 0) & (expected < 1)).mean()
    assert inside > 0.5
    assert abs(images - expected).max() < 1e-6


@pytest.fixture(scope="module")
def tiny_stable_diffusion(tmp_path_factory):
    pytest.importorskip("transformers")
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=4).eval()
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=16).eval()
    # A CLIP BPE tokenizer from a vocabulary of single letters (no merges), written here.
    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in string.ascii_lowercase:
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=8, local_files_only=True)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
                                                bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    scheduler = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_stable_diffusion_pipeline(tiny_stable_diffusion):
    pipe = tiny_stable_diffusion
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    call = dict(prompt="a cat", negative_prompt="dog", height=16, width=16, num_inference_steps=7,
                guidance_scale=5.0, output_type="latent")
    diffusers_scheduler = pipe.scheduler
    try:
        expected = pipe(**call, latents=latents).images
        pipe.scheduler = DiffodeScheduler.from_config(pipe.scheduler.config)
        assert (pipe.scheduler.integrator.order, pipe.scheduler.integrator.predict) == (2, "data")
        got = pipe(**call, latents=latents).images
        scale = max(1.0, expected.abs().max().item())
        # DPM-Solver++ 2M, as diffusers' DPMSolverMultistepScheduler, to float32 round-off.
        assert (got - expected).abs().max() <= 2e-6 * scale
        # diffode's own sampler on the same UNet, text embeddings and noise (CFG, unconditional first).
        scheduler = pipe.scheduler
        with torch.no_grad():
            condition, unconditional = pipe.encode_prompt("a cat", "cpu", 1, True, negative_prompt="dog")
            model = dd.wrap(unet_call(pipe.unet), scheduler.schedule, "noise", guidance="classifier-free",
                            condition=condition, unconditional_condition=unconditional, scale=5.0)
            solution = dd.solve(model, latents, dd.get_integrator("dpmpp_2m"), scheduler.times,
                                orders=scheduler.step_orders[:-1])
            own = model.data(solution.x, scheduler.times[-1])
        assert (got - own).abs().max() <= 2e-6 * scale
        # Stable Diffusion with Karras sigmas, the configuration of many community pipelines.
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(diffusers_scheduler.config, use_karras_sigmas=True)
        expected = pipe(**call, latents=latents).images
        pipe.scheduler = DiffodeScheduler.from_config(pipe.scheduler.config)
        assert (got - expected).abs().max() > 1e-3  # a different grid
        assert (pipe(**call, latents=latents).images - expected).abs().max() <= 2e-6 * scale
        # The whole pipeline, VAE decoding included, runs with the scheduler.
        image = pipe(**{**call, "output_type": "np", "num_inference_steps": 2}, latents=latents).images
        assert image.shape == (1, 16, 16, 3) and ((image >= 0) & (image <= 1)).all()
    finally:
        pipe.scheduler = diffusers_scheduler


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_stable_diffusion_pipeline_on_cuda(tiny_stable_diffusion, dtype):
    """On the GPU, in float32 and float16: the scheduler follows the pipeline's device and dtype and
    still agrees with DPMSolverMultistepScheduler (float16 states are integrated in float32)."""
    pipe = tiny_stable_diffusion
    diffusers_scheduler = pipe.scheduler
    # TF32 convolutions and nondeterministic cuDNN algorithms would change the model outputs from one
    # run to the next by far more than the schedulers differ.
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic = False, True
    pipe.to("cuda", dtype)
    try:
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)).to("cuda", dtype)
        call = dict(prompt="a cat", negative_prompt="dog", height=16, width=16, num_inference_steps=7,
                    guidance_scale=5.0, output_type="latent", latents=latents)
        expected = pipe(**call).images
        pipe.scheduler = DiffodeScheduler.from_config(pipe.scheduler.config)
        got = pipe(**call).images
        assert got.device.type == "cuda" and got.dtype == dtype
        assert pipe.scheduler.timesteps.device.type == "cuda"
        tolerance = 2e-6 if dtype == torch.float32 else 2e-3
        assert (got.float() - expected.float()).abs().max() <= tolerance * max(1.0, expected.abs().max().item())
    finally:
        pipe.scheduler = diffusers_scheduler
        pipe.to("cpu", torch.float32)
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic = flags


# -- configurations: both ways, refusals, short messages --------------------------------------------


@pytest.mark.parametrize("other", [DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, UniPCMultistepScheduler,
                                   DEISMultistepScheduler])
def test_configurations_load_both_ways(other, tmp_path):
    """A DiffodeScheduler configuration loads into diffusers' DPM-Solver, UniPC and DEIS schedulers and
    theirs into DiffodeScheduler, through save_pretrained / from_pretrained and from_config."""
    wanted = dict(**SD, prediction_type="v_prediction", solver_order=3, use_karras_sigmas=True,
                  final_sigmas_type="sigma_min", timestep_spacing="trailing", thresholding=True, sample_max_value=1.5)
    ours = DiffodeScheduler(**wanted)
    ours.save_pretrained(tmp_path / "ours")
    theirs = other(**{key: value for key, value in wanted.items() if key in other._get_init_keys(other)})
    theirs.save_pretrained(tmp_path / "theirs")
    for loaded in (other.from_pretrained(tmp_path / "ours"), other.from_config(ours.config)):
        assert type(loaded) is other
        shared = set(wanted) & set(loaded.config)
        assert len(shared) >= 8 and {key: loaded.config[key] for key in shared} == {key: wanted[key] for key in shared}
        loaded.set_timesteps(8)
    for loaded in (DiffodeScheduler.from_pretrained(tmp_path / "theirs"), DiffodeScheduler.from_config(theirs.config)):
        shared = set(wanted) & set(theirs.config)
        assert {key: loaded.config[key] for key in shared} == {key: wanted[key] for key in shared}
        assert (loaded.integrator.order, loaded.integrator.predict) == (3, "data")
        loaded.set_timesteps(8)
        other.from_config(loaded.config).set_timesteps(8)  # and back


def test_a_saved_configuration_runs_the_same_method_in_diffusers(tmp_path):
    ours = DiffodeScheduler(**SD, use_karras_sigmas=True, solver_type="heun", prediction_type="v_prediction")
    ours.save_pretrained(tmp_path)
    theirs = DPMSolverMultistepScheduler.from_pretrained(tmp_path)
    assert_agrees(run(ours, x_T(), 12, "v_prediction"), run(theirs, x_T(), 12, "v_prediction"))


def test_integrator_and_method_keys():
    """``integrator`` and (``solver_order``, ``algorithm_type``) describe the same choice: the
    configuration records both, a from_config argument replaces the other, a contradiction is refused."""
    scheduler = DiffodeScheduler(integrator="dpm_3m")
    assert (scheduler.config.solver_order, scheduler.config.algorithm_type) == (3, "dpmsolver")
    assert scheduler.config.solver_type == "midpoint"
    config = DPMSolverMultistepScheduler().config  # solver_order=2, dpmsolver++
    assert DiffodeScheduler.from_config(config, integrator="dpmpp_3m").integrator.order == 3
    assert DiffodeScheduler.from_config(scheduler.config, solver_order=2).integrator.order == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert DiffodeScheduler.from_config(config, algorithm_type="dpmsolver").integrator.predict == "noise"
    assert DiffodeScheduler.from_config(scheduler.config).integrator.order == 3  # the recorded integrator
    with pytest.raises(ValueError, match="integrator='dpmpp_3m' has order 3 but solver_order=2"):
        DiffodeScheduler(integrator="dpmpp_3m", solver_order=2)
    with pytest.raises(ValueError, match="algorithm_type='dpmsolver'"):
        DiffodeScheduler(integrator="dpmpp_2m", algorithm_type="dpmsolver")
    # DEIS's algorithm type means DPM-Solver++, and is recorded as such.
    assert DiffodeScheduler(algorithm_type="deis").config.algorithm_type == "dpmsolver++"


@pytest.mark.parametrize("config, match", [
    ({"use_beta_sigmas": True}, "use_beta_sigmas=True is not supported"),
    ({"use_flow_sigmas": True}, "use_flow_sigmas=True is not supported"),
    ({"use_dynamic_shifting": True}, "use_dynamic_shifting=True is not supported"),
    ({"algorithm_type": "sde-dpmsolver++"}, "algorithm_type='sde-dpmsolver\\+\\+' is a stochastic sampler"),
    ({"algorithm_type": "sde-dpmsolver"}, "algorithm_type='sde-dpmsolver' is a stochastic sampler"),
    ({"prediction_type": "flow_prediction"}, "prediction_type='flow_prediction'"),
    ({"use_karras_sigmas": True, "use_lu_lambdas": True}, "use only one of"),
    ({"solver_order": 4}, "solver_order must be 1, 2 or 3"),
    ({"thresholding": True, "dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio"),
    ({"thresholding": True, "sample_max_value": 0.5}, "sample_max_value must be >= 1"),
    ({"variance_type": "learned_once"}, "variance_type"),
    ({"use_karras_sigmas": "yes"}, "use_karras_sigmas must be True or False"),
])
def test_keys_without_a_diffode_meaning_are_refused(config, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DiffodeScheduler(**config)


def test_harmless_keys_warn():
    with pytest.warns(UserWarning, match="flow_shift=3.0 has no effect"):
        DiffodeScheduler(flow_shift=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DiffodeScheduler.from_config(DPMSolverMultistepScheduler().config)  # the defaults warn about nothing


def test_error_messages_stay_short():
    """1000 steps on the linspace spacing (DDPMPipeline's default) repeat timesteps: refused, naming
    the first repeat, in a line rather than thousands of characters."""
    scheduler = DiffodeScheduler()
    with pytest.raises(ValueError, match=r"not strictly decreasing: timesteps\[\d+\] = (\d+), timesteps\[\d+\] = \1")\
            as error:
        scheduler.set_timesteps(1000)
    assert len(str(error.value)) < 200
    scheduler.set_timesteps(999)
    with pytest.raises(ValueError, match=r"timestep 0 is not one of this run's timesteps \[999, 998, 997, 996, \.\.\., 1\] "
                                         r"\(999 values\)") as error:
        scheduler.step(x_T(), 0, x_T())
    assert len(str(error.value)) < 200
    with pytest.raises(ValueError, match="timesteps cannot be given with use_karras_sigmas=True"):
        DiffodeScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[900, 100])
    with pytest.raises(ValueError, match="twice the channels"):
        scheduler = DiffodeScheduler(variance_type="learned_range")
        scheduler.set_timesteps(2)
        scheduler.step(x_T(), scheduler.timesteps[0], x_T())
