"""Flow matching (rectified flow), as FLUX, SD3, Qwen-Image, Z-Image and Chroma are trained.

    x_sigma = (1 - sigma) * x_0 + sigma * noise,   target = noise - x_0   (the velocity)

Times t are drawn from a density (logit-normal by default, SD3's paper; or uniform, or "mode") and mapped to
sigmas by the base model's shift: a static shift (SD3: 3.0) or, where the scheduler shifts by resolution
(FLUX.1-dev, Qwen-Image, Flux.2), mu = calculate_shift(image sequence length) as the pipeline's sampler does,
so training sees the noise levels that inference at that resolution uses. The loss may be weighted by sigma
(`compute_loss_weighting_for_sd3`). A leaf family says only how its transformer is called (`predict`).
"""

from __future__ import annotations

import math
from typing import ClassVar

from .base import Family, ImageGeometry

TIMESTEP_DENSITIES = ("logit_normal", "uniform", "mode")
LOSS_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")


class FlowMatchingFamily(Family):
    patch_size: ClassVar[int] = 2  # latent pixels per token side (packing); the pixel multiple is vae scale x this

    def scheduler_config(self) -> dict:
        return dict(self.scheduler.config) if self.scheduler is not None else {}

    # --- times and sigmas

    def sample_timesteps(self, batch_size: int, generator=None):
        import torch
        from diffusers.training_utils import compute_density_for_timestep_sampling

        config = self.config
        scheme = {"uniform": "none"}.get(config.timestep_density, config.timestep_density)
        u = compute_density_for_timestep_sampling(
            weighting_scheme=scheme,
            batch_size=batch_size,
            logit_mean=config.logit_mean,
            logit_std=config.logit_std,
            mode_scale=config.mode_scale,
            generator=generator,
        )
        return u.clamp(1e-4, 1 - 1e-4).to(torch.float32)

    def image_seq_len(self, latents) -> int:
        """Tokens of one image in the transformer: latent height x width / patch_size^2."""
        return (latents.shape[-2] // self.patch_size) * (latents.shape[-1] // self.patch_size)

    def sigmas(self, t, latents):
        """sigma of each time t for latents of this size: the configured or the scheduler's shift."""
        import torch

        scheduler = self.scheduler_config()
        t = t.to(torch.float32)
        if self.config.timestep_shift is not None:
            shift = float(self.config.timestep_shift)
            return shift * t / (1 + (shift - 1) * t)
        if scheduler.get("use_dynamic_shifting"):
            mu = self.dynamic_shift_mu(latents)
            if scheduler.get("time_shift_type", "exponential") == "linear":
                return mu / (mu + (1 / t - 1))
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1))
        shift = float(scheduler.get("shift", 1.0))
        return shift * t / (1 + (shift - 1) * t)

    def dynamic_shift_mu(self, latents) -> float:
        """mu of the resolution-dependent shift, as the family's pipeline computes it for these latents."""
        scheduler = self.scheduler_config()
        return calculate_shift(
            self.image_seq_len(latents),
            scheduler.get("base_image_seq_len", 256),
            scheduler.get("max_image_seq_len", 4096),
            scheduler.get("base_shift", 0.5),
            scheduler.get("max_shift", 1.15),
        )

    # --- the loss

    def predict(self, noisy, sigmas, prompts: dict, geometry: list[ImageGeometry]):
        """The transformer's velocity prediction (same shape as `noisy`) at noise levels `sigmas` ([B] in (0, 1))."""
        raise NotImplementedError

    def loss(self, latents, prompts: dict, noise, t, geometry: list[ImageGeometry], *, weighted: bool = True):
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        sigmas = self.sigmas(t.to(latents.device), latents).to(latents.device)
        expanded = sigmas.view(-1, *([1] * (latents.ndim - 1)))
        noisy = (1.0 - expanded) * latents + expanded * noise
        prediction = self.predict(noisy.to(self.weight_dtype), sigmas, prompts, geometry)
        target = noise - latents
        error = ((prediction.float() - target.float()) ** 2).flatten(1).mean(dim=1)
        if not weighted or self.config.loss_weighting == "none":
            return error
        return error * compute_loss_weighting_for_sd3(self.config.loss_weighting, sigmas=sigmas).float()


def calculate_shift(image_seq_len, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15) -> float:
    """mu of the resolution-dependent shift: linear in the image's token count (as diffusers' FLUX pipelines)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len
