"""Z-Image in the training engine (training/engine/families/z_image.py) on CPU: a tiny Z-Image pipeline built offline
(training/engine/tiny/z_image.py) and the real photos of the `shard` fixture. No database, no network."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.engine.families import ModelUnavailable, family_of_folder
from training.engine.families.z_image import ZImageFamily
from training.engine.tiny import build_tiny
from training.engine.tiny.z_image import TEXT_WIDTH
from training.engine.train import Callbacks, TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a photo of a cat"


@pytest.fixture(scope="session")
def tiny_z_image(tmp_path_factory) -> Path:
    return build_tiny("z_image", tmp_path_factory.mktemp("tiny-z-image") / "tiny-z-image")


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


def _loaded(base: Path) -> ZImageFamily:
    family = ZImageFamily(base, _config(base), torch.device("cpu"), torch.float32)
    family.load()
    return family


def _user_pipeline(base: Path):
    from diffusers import ZImagePipeline

    pipeline = ZImagePipeline.from_pretrained(str(base))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _user_image(pipeline, seed: int) -> torch.Tensor:
    """One image as a user makes it: the prompt's text, the "" negative, guidance 4 (the family's default)."""
    output = pipeline(
        PROMPT,
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=ZImageFamily.default_validation_guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return torch.from_numpy(output.images[0])


def test_the_tiny_z_image_folder_is_a_z_image_pipeline_built_once(tiny_z_image):
    index = json.loads((tiny_z_image / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline" and index["text_encoder"] == ["transformers", "Qwen3Model"]
    assert family_of_folder(tiny_z_image, str(tiny_z_image)) is ZImageFamily
    started = time.perf_counter()
    assert build_tiny("z_image", tiny_z_image) == tiny_z_image  # complete: reused, not rebuilt
    assert time.perf_counter() - started < 1
    assert _loaded(tiny_z_image).pixel_multiple == 16  # the VAE's 8x downscale times the patch of 2


def test_prompt_embeddings_are_the_pipelines_one_per_caption_without_padding(tiny_z_image):
    family = _loaded(tiny_z_image)
    long_caption = "a rocket standing on its launch pad at dawn, steam rising"
    cat, empty, rocket = family.encode_prompts([PROMPT, "", long_caption])
    pipeline = _user_pipeline(tiny_z_image)
    with torch.no_grad():
        embeds, negative = pipeline.encode_prompt([PROMPT], do_classifier_free_guidance=True, negative_prompt=[""])
    torch.testing.assert_close(cat["prompt_embeds"], embeds[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(empty["prompt_embeds"], negative[0], atol=1e-5, rtol=1e-4)
    # The chat template's tokens only: "" still has some, a longer caption more, and none has the 512 of padding.
    lengths = [item["prompt_embeds"].shape[0] for item in (empty, cat, rocket)]
    assert 0 < lengths[0] < lengths[1] < lengths[2] < 64
    assert all(item["prompt_embeds"].shape[1] == TEXT_WIDTH for item in (empty, cat, rocket))
    batch = family.collate_prompts([cat, rocket])
    assert [tensor.shape[0] for tensor in batch["prompt_embeds"]] == lengths[1:]


def test_training_noise_levels_and_velocity_are_the_samplers(tiny_z_image):
    """One Euler step of the pipeline from sigma to 0 goes to x - sigma * v, v being noise - x_0 in the scheduler's
    convention: the family's `predict` must be that v (so it feeds the transformer 1 - sigma and negates its output,
    as the pipeline does; either half wrong and this fails), and its sigma for a time t the pipeline's."""
    family = _loaded(tiny_z_image)
    (prompt,) = family.encode_prompts([PROMPT])
    batch = family.collate_prompts([prompt])
    pipeline = family.pipeline()
    latents = torch.randn((1, 16, 4, 4), generator=torch.Generator().manual_seed(1))
    t = 0.3
    with torch.no_grad():
        stepped = pipeline(
            prompt_embeds=batch["prompt_embeds"],
            latents=latents,
            sigmas=[t],
            guidance_scale=0.0,
            height=32,
            width=32,
            output_type="latent",
        ).images
        sigma = pipeline.scheduler.sigmas[:1]
        assert family.sigmas(torch.tensor([t]), latents) == pytest.approx(sigma.item())
        velocity = family.predict(latents, sigma, batch, [None])
    assert velocity.abs().mean() > 0.1  # a real prediction, so that a wrong sign shows
    torch.testing.assert_close(stepped, latents - sigma.item() * velocity, atol=1e-5, rtol=1e-4)


def test_lora_trains_every_attention_with_captions_of_different_lengths(tiny_z_image):
    import peft

    family = _loaded(tiny_z_image)
    family.denoiser.add_adapter(
        peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=list(family.lora_targets))
    )
    pixels = torch.rand((2, 3, 64, 48), generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = family.encode_images(pixels)
    assert latents.shape == (2, 16, 8, 6)
    prompts = family.collate_prompts(family.encode_prompts([PROMPT, "a rocket on its launch pad at dawn"]))
    t = family.sample_timesteps(2, generator=torch.Generator().manual_seed(0))
    family.loss(latents, prompts, torch.randn_like(latents), t, [None, None]).mean().backward()
    trained = {
        name.split(".attention.")[0].split(".")[0]
        for name, parameter in family.denoiser.named_parameters()
        if "lora_" in name and parameter.grad is not None and parameter.grad.abs().sum() > 0
    }
    assert trained == {"noise_refiner", "context_refiner", "layers"}


def test_a_z_image_run_lowers_the_held_out_loss_and_its_lora_loads_into_the_pipeline(tiny_z_image, shard, tmp_path):
    validations = []
    config = _config(tiny_z_image)
    result = train(config, [shard], tmp_path, callbacks=Callbacks(on_validation=lambda *a: validations.append(a)))
    assert result.family == "z_image" and result.final_step == 8 and not result.stopped
    losses = [loss for _, loss in result.validation_losses]
    assert result.validation_losses[0][0] == 0 and len(losses) == 3
    assert losses[-1] < losses[0], losses
    weights = load_file(str(tmp_path / "pytorch_lora_weights.safetensors"))
    assert weights and all(name.startswith("transformer.") for name in weights)

    pipeline = _user_pipeline(tiny_z_image)
    before = _user_image(pipeline, config.seed)
    pipeline.load_lora_weights(str(tmp_path))
    assert pipeline.get_list_adapters() == {"transformer": ["default_0"]}
    after = _user_image(pipeline, config.seed)
    assert not torch.allclose(before, after, atol=1e-3)
    # The engine's last preview of the prompt is what the user's pipeline with the LoRA makes of it.
    engine_image = torch.from_numpy(np.asarray(validations[-1][1][0], dtype=np.float32) / 255)
    assert (after - engine_image).abs().max() < 2 / 255


def test_a_folder_without_its_tokenizer_or_with_a_text_encoder_of_another_width_is_refused(
    tiny_z_image, shard, tmp_path
):
    from transformers import Qwen3Config, Qwen3Model

    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_z_image, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer"))
    with pytest.raises(ModelUnavailable, match="base_model") as error:
        train(_config(no_tokenizer), [shard], tmp_path / "out")
    assert "tokenizer" in str(error.value) and str(no_tokenizer) in str(error.value)

    wider = tmp_path / "wider-text-encoder"
    shutil.copytree(tiny_z_image, wider)
    config = Qwen3Config.from_pretrained(str(tiny_z_image / "text_encoder"))
    config.hidden_size = 2 * TEXT_WIDTH
    Qwen3Model(config).save_pretrained(str(wider / "text_encoder"))
    with pytest.raises(ModelUnavailable, match=f"text encoder's width {2 * TEXT_WIDTH} is not"):
        _loaded(wider)
