"""Stable Diffusion 3.5 in the training engine (training/engine/families/sd3.py) on CPU: a tiny SD3.5 pipeline built
offline (training/engine/tiny/sd3.py) and the real photos of the `shard` fixture. No database, no network."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.engine.families import ModelUnavailable, family_of_folder
from training.engine.families.sd3 import SD3Family
from training.engine.tiny import build_tiny
from training.engine.tiny.sd3 import CLIP_G_WIDTH, CLIP_L_WIDTH, T5_WIDTH
from training.engine.train import Callbacks, TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a photo of a cat"


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    return build_tiny("sd3", tmp_path_factory.mktemp("tiny-sd3") / "tiny-sd3")


def _config(base: Path, **overrides) -> TrainConfig:
    values = dict(
        base_model=str(base),
        resolution=64,
        batch_size=2,
        max_steps=8,
        learning_rate=1e-3,
        checkpoint_every=100,
        validation_every=4,
        validation_prompts=(PROMPT,),
        validation_steps=2,
    )
    return TrainConfig(**{**values, **overrides})


def _loaded(base: Path) -> SD3Family:
    family = SD3Family(base, _config(base), torch.device("cpu"), torch.float32)
    family.load()
    return family


def _user_pipeline(base: Path):
    from diffusers import StableDiffusion3Pipeline

    pipeline = StableDiffusion3Pipeline.from_pretrained(str(base))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _user_image(pipeline, seed: int) -> torch.Tensor:
    """One image as a user makes it: the prompt's text, the "" negative, guidance 3.5 (the family's default)."""
    output = pipeline(
        PROMPT,
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=SD3Family.default_validation_guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return torch.from_numpy(output.images[0])


def test_the_tiny_sd3_folder_is_an_sd3_pipeline_built_once(tiny_sd3):
    assert json.loads((tiny_sd3 / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    assert family_of_folder(tiny_sd3, str(tiny_sd3)) is SD3Family
    started = time.perf_counter()
    assert build_tiny("sd3", tiny_sd3) == tiny_sd3  # complete: reused, not rebuilt
    assert time.perf_counter() - started < 1
    family = _loaded(tiny_sd3)
    assert family.pixel_multiple == 16  # the VAE's 8x downscale times the transformer's patch of 2
    assert family.scheduler.config.shift == 3.0


def test_prompt_embeddings_are_the_pipelines(tiny_sd3):
    family = _loaded(tiny_sd3)
    cat, empty = family.encode_prompts([PROMPT, ""])
    pipeline = _user_pipeline(tiny_sd3)
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipeline.encode_prompt(
            PROMPT, None, None, do_classifier_free_guidance=True, negative_prompt=""
        )
    assert cat["prompt_embeds"].shape == (77 + SD3Family.max_sequence_length, T5_WIDTH)
    assert cat["pooled_prompt_embeds"].shape == (CLIP_L_WIDTH + CLIP_G_WIDTH,)
    torch.testing.assert_close(cat["prompt_embeds"], embeds[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cat["pooled_prompt_embeds"], pooled[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(empty["prompt_embeds"], negative[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(empty["pooled_prompt_embeds"], negative_pooled[0], atol=1e-5, rtol=1e-4)
    # CLIP's 77 tokens are zero-padded from the two CLIP widths to T5's.
    assert torch.count_nonzero(cat["prompt_embeds"][:77, CLIP_L_WIDTH + CLIP_G_WIDTH :]) == 0
    assert torch.count_nonzero(cat["prompt_embeds"][:77, : CLIP_L_WIDTH + CLIP_G_WIDTH]) > 0


def test_training_noise_levels_and_velocity_are_the_samplers(tiny_sd3):
    """One Euler step of the pipeline from sigma to 0 goes to x - sigma * v: the family's `predict` must be that v,
    and its sigma for a time t the one the pipeline's scheduler makes of t (SD3.5's static shift of 3)."""
    family = _loaded(tiny_sd3)
    (prompt,) = family.encode_prompts([PROMPT])
    batch = family.collate_prompts([prompt])
    pipeline = family.pipeline()
    latents = torch.randn((1, 16, 4, 4), generator=torch.Generator().manual_seed(1))
    t = 0.4
    with torch.no_grad():
        stepped = pipeline(
            prompt_embeds=batch["prompt_embeds"],
            pooled_prompt_embeds=batch["pooled_prompt_embeds"],
            latents=latents,
            sigmas=[t],
            guidance_scale=1.0,
            height=32,
            width=32,
            output_type="latent",
        ).images
        sigma = pipeline.scheduler.sigmas[:1]
        assert family.sigmas(torch.tensor([t]), latents) == pytest.approx(sigma.item())
        assert sigma.item() == pytest.approx(3 * t / (1 + 2 * t))
        velocity = family.predict(latents, sigma, batch, [None])
    torch.testing.assert_close(stepped, latents - sigma.item() * velocity, atol=1e-5, rtol=1e-4)


def test_lora_trains_the_joint_attentions_image_and_context_projections(tiny_sd3):
    import peft

    family = _loaded(tiny_sd3)
    family.denoiser.add_adapter(
        peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=list(family.lora_targets))
    )
    pixels = torch.rand((2, 3, 64, 48), generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = family.encode_images(pixels)
    assert latents.shape == (2, 16, 8, 6)
    prompts = family.collate_prompts(family.encode_prompts([PROMPT, "a rocket"]))
    t = family.sample_timesteps(2, generator=torch.Generator().manual_seed(0))
    family.loss(latents, prompts, torch.randn_like(latents), t, [None, None]).mean().backward()
    trained = {
        name.split(".lora_")[0].split("attn.")[-1]
        for name, parameter in family.denoiser.named_parameters()
        if "lora_" in name and parameter.grad is not None and parameter.grad.abs().sum() > 0
    }
    assert {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"} <= trained


def test_an_sd3_run_lowers_the_held_out_loss_and_its_lora_loads_into_the_pipeline(tiny_sd3, shard, tmp_path):
    validations = []
    config = _config(tiny_sd3)
    result = train(config, [shard], tmp_path, callbacks=Callbacks(on_validation=lambda *a: validations.append(a)))
    assert result.family == "sd3" and result.final_step == 8 and not result.stopped
    losses = [loss for _, loss in result.validation_losses]
    assert result.validation_losses[0][0] == 0 and len(losses) == 3
    assert losses[-1] < losses[0], losses
    weights = load_file(str(tmp_path / "pytorch_lora_weights.safetensors"))
    assert weights and all(name.startswith("transformer.") for name in weights)
    assert any(".attn.add_q_proj." in name for name in weights)

    pipeline = _user_pipeline(tiny_sd3)
    before = _user_image(pipeline, config.seed)
    pipeline.load_lora_weights(str(tmp_path))
    assert pipeline.get_list_adapters() == {"transformer": ["default_0"]}
    after = _user_image(pipeline, config.seed)
    assert not torch.allclose(before, after, atol=1e-3)
    # The engine's last preview of the prompt is what the user's pipeline with the LoRA makes of it.
    engine_image = torch.from_numpy(np.asarray(validations[-1][1][0], dtype=np.float32) / 255)
    assert (after - engine_image).abs().max() < 2 / 255


def test_a_folder_without_t5_or_with_a_t5_of_another_width_is_refused(tiny_sd3, shard, tmp_path):
    from transformers import T5Config, T5EncoderModel

    no_t5 = tmp_path / "no-t5"
    shutil.copytree(tiny_sd3, no_t5, ignore=shutil.ignore_patterns("text_encoder_3"))
    with pytest.raises(ModelUnavailable, match="base_model") as error:
        train(_config(no_t5), [shard], tmp_path / "out")
    assert "text_encoder_3" in str(error.value) and str(no_t5) in str(error.value)

    wider = tmp_path / "wider-t5"
    shutil.copytree(tiny_sd3, wider)
    config = T5Config.from_pretrained(str(tiny_sd3 / "text_encoder_3"))
    config.d_model = 2 * T5_WIDTH
    T5EncoderModel(config).save_pretrained(str(wider / "text_encoder_3"))
    with pytest.raises(ModelUnavailable, match="do not fit together.*T5's width 128"):
        _loaded(wider)
