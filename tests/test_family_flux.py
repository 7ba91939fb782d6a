"""FLUX.1 (schnell and dev) and Chroma in the training engine, on CPU: tiny pipelines built offline (random
weights) and the real photos of the `shard` fixture. No database, no network."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from marketplace.core.photos import load_photo
from training.engine.families import ModelUnavailable, family_of_folder
from training.engine.families.chroma import ChromaFamily
from training.engine.families.flux import FluxFamily, latent_image_ids, pack_latents, unpack_latents
from training.engine.tiny import build_tiny
from training.engine.train import TrainConfig, train

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    # diffusers' own Chroma transformer imports the deprecated name: not ours.
    pytest.mark.filterwarnings("ignore:`FluxPosEmbed` is deprecated"),
]

PROMPT = "a photo of a rocket"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> tiny pipeline folder: "schnell", "dev" (FLUX.1) and "chroma"."""
    root = tmp_path_factory.mktemp("tiny-flux")
    return {
        "schnell": build_tiny("flux", root / "schnell"),
        "dev": build_tiny("flux", root / "dev", variant="dev"),
        "chroma": build_tiny("chroma", root / "chroma"),
    }


def _config(folder: Path, **overrides) -> TrainConfig:
    values = dict(
        base_model=str(folder), resolution=64, batch_size=2, max_steps=8, learning_rate=1e-3, validation_steps=2
    )
    return TrainConfig(**{**values, **overrides})


def _loaded(folder: Path, **overrides):
    family = family_of_folder(folder, str(folder))(folder, _config(folder, **overrides), CPU, torch.float32)
    family.load()
    return family


def _photos() -> torch.Tensor:
    """Two real photos, 64 px, as the loop hands them to encode_images."""
    pixels = []
    for name in ("astronaut", "rocket"):
        image = load_photo(name).convert("RGB").resize((64, 64))
        pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(pixels)


# --- packing and variants


def test_packing_matches_flux_pipeline():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 6, 10)  # not square: rows and columns must not be swapped
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 6, 10))
    assert torch.equal(unpack_latents(packed, 6, 10), latents)
    expected_ids = FluxPipeline._prepare_latent_image_ids(2, 3, 5, CPU, torch.float32)
    assert torch.equal(latent_image_ids(6, 10, CPU, torch.float32), expected_ids)


def test_the_variant_comes_from_the_guidance_embedding(tiny):
    schnell = FluxFamily(tiny["schnell"], _config(tiny["schnell"]), CPU, torch.float32)
    dev = FluxFamily(tiny["dev"], _config(tiny["dev"]), CPU, torch.float32)
    # Known before load(): the loop may read the previews' defaults first.
    assert (schnell.default_validation_steps, schnell.default_validation_guidance) == (4, 0.0)
    assert (dev.default_validation_steps, dev.default_validation_guidance) == (28, 3.5)
    assert schnell.prompt_cache_tag != dev.prompt_cache_tag  # 256 vs 512 T5 tokens
    assert family_of_folder(tiny["chroma"], "chroma") is ChromaFamily
    assert build_tiny("flux", tiny["dev"], variant="dev") == tiny["dev"]  # complete: reused
    with pytest.raises(ValueError, match="variant"):
        build_tiny("flux", tiny["dev"].parent / "other", variant="pro")


@pytest.mark.parametrize("variant", ["schnell", "dev"])
def test_dev_is_trained_with_its_guidance_embedding_and_schnell_without(tiny, variant):
    predictions = []
    for guidance in (1.0, 4.0):
        family = _loaded(tiny[variant], guidance=guidance)
        latents = family.encode_images(_photos())
        prompts = family.collate_prompts(family.encode_prompts([PROMPT, ""]))
        with torch.no_grad():
            predictions.append(family.predict(latents, torch.tensor([0.3, 0.6]), prompts, []))
    assert predictions[0].shape == latents.shape
    assert (family.denoiser.time_text_embed.__class__.__name__ == "CombinedTimestepGuidanceTextProjEmbeddings") == (
        variant == "dev"
    )
    assert torch.equal(predictions[0], predictions[1]) == (variant == "schnell")


# --- text and previews match the diffusers pipelines


def test_flux_prompts_and_previews_match_flux_pipeline(tiny):
    from diffusers import FluxPipeline

    family = _loaded(tiny["dev"])
    pipeline = FluxPipeline.from_pretrained(str(tiny["dev"]))
    pipeline.set_progress_bar_config(disable=True)
    length = family.text_length(family.tokenizers["tokenizer_2"])
    expected, pooled, _ = pipeline.encode_prompt(PROMPT, prompt_2=None, max_sequence_length=length)
    (item,) = family.encode_prompts([PROMPT])
    assert torch.allclose(item["prompt_embeds"], expected[0], atol=1e-6)
    assert torch.allclose(item["pooled_prompt_embeds"], pooled[0], atol=1e-6)

    family.release_text_encoders()  # previews run from the cached embeddings alone
    prompt = family.collate_prompts([item])
    settings = dict(height=64, width=48, guidance=3.5)
    (preview,) = family.generate(family.pipeline(), prompt, None, steps=3, generator=torch.manual_seed(7), **settings)
    reference = pipeline(
        PROMPT,
        max_sequence_length=length,
        height=64,
        width=48,
        num_inference_steps=3,
        guidance_scale=3.5,
        generator=torch.manual_seed(7),
    ).images[0]
    assert preview.size == reference.size == (48, 64)
    assert np.abs(np.asarray(preview, dtype=int) - np.asarray(reference, dtype=int)).max() <= 1


def test_chroma_keeps_only_the_attended_tokens_and_masks_batch_padding(tiny):
    from diffusers import ChromaPipeline

    family = _loaded(tiny["chroma"])
    texts = [PROMPT, "a longer caption: a red rocket on its launch pad at night"]
    items = family.encode_prompts(texts)
    pipeline = ChromaPipeline.from_pretrained(str(tiny["chroma"]))
    full, full_mask = pipeline._get_t5_prompt_embeds(texts, max_sequence_length=family.text_length(pipeline.tokenizer))
    for row, item in enumerate(items):
        # The caption's tokens and the first padding token, which Chroma attends to; nothing else.
        assert item["prompt_embeds"].shape[0] == int(full_mask[row].sum()) < full.shape[1]
        assert torch.allclose(item["prompt_embeds"], full[row, : item["prompt_embeds"].shape[0]], atol=1e-6)

    latents = family.encode_images(_photos())
    sigmas = torch.tensor([0.4, 0.4])
    with torch.no_grad():
        batch = family.collate_prompts(items)
        assert batch["attention_mask"].sum(dim=1).tolist() == [len(item["prompt_embeds"]) for item in items]
        together = family.predict(latents, sigmas, batch, [])
        alone = [family.predict(latents[i : i + 1], sigmas[:1], family.collate_prompts([items[i]]), []) for i in (0, 1)]
        # The same with all 512-style padding, masked as booleans: padding changes nothing.
        padded = {"prompt_embeds": full, "attention_mask": full_mask.bool()}
        fully_padded = family.predict(latents, sigmas, padded, [])
    assert torch.allclose(together, torch.cat(alone), atol=1e-5)
    assert torch.allclose(together, fully_padded, atol=1e-5)

    # Gradient checkpointing: diffusers' single-stream blocks then drop the mask; the family still masks.
    family.denoiser.enable_gradient_checkpointing()
    with torch.enable_grad():
        checkpointed = family.predict(latents, sigmas, batch, [])
        unmasked = FluxFamily.predict(family, latents, sigmas, batch, [])
    assert torch.allclose(checkpointed, together, atol=1e-5)
    assert not torch.allclose(unmasked, together, atol=1e-3), "diffusers masks now: drop ChromaFamily.predict"
    family.denoiser.disable_gradient_checkpointing()

    family.release_text_encoders()
    negative = family.collate_prompts([items[0]])  # any embedding will do
    prompt = family.collate_prompts([items[1]])
    with pytest.raises(ValueError, match="negative prompt"):
        family.generate(family.pipeline(), prompt, None, height=32, width=32, steps=1, guidance=3.0, generator=None)
    images = family.generate(
        family.pipeline(), prompt, negative, height=32, width=32, steps=2, guidance=3.0, generator=torch.manual_seed(0)
    )
    assert images[0].size == (32, 32)


# --- end to end through train()


def _image(pipeline, **extra) -> np.ndarray:
    output = pipeline(
        PROMPT, height=64, width=64, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np", **extra
    )
    return output.images[0]


@pytest.mark.parametrize(
    ("variant", "pipeline_class", "extra"),
    [
        ("schnell", "FluxPipeline", dict(guidance_scale=0.0)),
        ("dev", "FluxPipeline", dict(guidance_scale=3.5)),
        ("chroma", "ChromaPipeline", dict(guidance_scale=3.0, negative_prompt="blurry")),
    ],
)
def test_a_run_lowers_the_held_out_loss_and_its_lora_loads_into_the_pipeline(
    tiny, shard, tmp_path, variant, pipeline_class, extra
):
    import diffusers

    result = train(_config(tiny[variant], guidance=3.5 if variant == "dev" else 1.0), [shard], tmp_path)
    assert result.family == ("chroma" if variant == "chroma" else "flux")
    assert result.final_step == 8 and all(np.isfinite(result.losses))
    (first_step, first), *_, (last_step, last) = result.validation_losses
    assert first_step == 0 and last_step == 8 and last < first

    pipeline = getattr(diffusers, pipeline_class).from_pretrained(str(tiny[variant]))
    pipeline.set_progress_bar_config(disable=True)
    before = _image(pipeline, **extra)
    pipeline.load_lora_weights(str(tmp_path))
    assert pipeline.get_list_adapters() == {"transformer": ["default_0"]}
    assert np.abs(_image(pipeline, **extra) - before).max() > 1e-3


def test_a_flux_folder_without_t5_is_refused_by_name(tiny, shard, tmp_path):
    broken = tmp_path / "no-t5"
    shutil.copytree(tiny["schnell"], broken, ignore=shutil.ignore_patterns("text_encoder_2"))
    with pytest.raises(ModelUnavailable, match="base_model") as error:
        train(_config(broken), [shard], tmp_path / "out")
    assert "text_encoder_2" in str(error.value) and "FLUX.1" in str(error.value)
