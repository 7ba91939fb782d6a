from django import forms

from marketplace.commerce.models import PackLicence
from training import base_models
from training.engine.families.flow import LOSS_WEIGHTINGS, TIMESTEP_DENSITIES
from training.engine.train import LR_SCHEDULERS, MIXED_PRECISION, TrainConfig

DEFAULTS = TrainConfig(base_model="-")


def base_model_choices() -> list[tuple[str, str]]:
    """The base models that can be launched here, each with its family, licence and commercial use."""
    choices = [("", "Pick a base model")]
    for entry in base_models.available_base_models():
        commercial = "commercial use " + ("allowed" if entry.commercial_use else "not allowed")
        if entry.licence.commercial_condition:
            commercial += ", on a condition"
        choices.append((entry.key, f"{entry.label} · {entry.model.family} · {entry.licence.name} · {commercial}"))
    return choices


class LaunchForm(forms.Form):
    """Every hyperparameter of the engine, with its defaults. The engine's TrainConfig validates the values."""

    licence = forms.ModelChoiceField(
        queryset=PackLicence.objects.filter(revoked_at__isnull=True).select_related("buyer", "version__pack"),
        help_text="The buyer's licence of a pack version: no licence, no run.",
    )
    base_model_key = forms.ChoiceField(
        choices=base_model_choices,
        label="Base model",
        help_text="Its licence must allow commercial use when the pack's does: the table above says which do.",
    )
    train_text_encoder = forms.BooleanField(required=False, initial=DEFAULTS.train_text_encoder,
                                            label="Train the text encoder too")  # fmt: skip
    rank = forms.IntegerField(initial=DEFAULTS.rank, label="LoRA rank")
    alpha = forms.FloatField(initial=DEFAULTS.alpha, label="LoRA alpha")
    learning_rate = forms.FloatField(initial=DEFAULTS.learning_rate)
    lr_scheduler = forms.ChoiceField(choices=[(s, s) for s in LR_SCHEDULERS], initial=DEFAULTS.lr_scheduler,
                                     label="Learning-rate schedule")  # fmt: skip
    lr_warmup_steps = forms.IntegerField(initial=DEFAULTS.lr_warmup_steps, label="Warm-up steps")
    max_steps = forms.IntegerField(initial=DEFAULTS.max_steps, label="Steps")
    batch_size = forms.IntegerField(initial=DEFAULTS.batch_size)
    gradient_accumulation = forms.IntegerField(initial=DEFAULTS.gradient_accumulation)
    resolution = forms.IntegerField(initial=DEFAULTS.resolution, help_text="Pixels; a multiple of 8.")
    seed = forms.IntegerField(initial=DEFAULTS.seed)
    mixed_precision = forms.ChoiceField(choices=[(p, p) for p in MIXED_PRECISION], initial=DEFAULTS.mixed_precision,
                                        help_text="On a GPU; the CPU trains in fp32.")  # fmt: skip
    gradient_checkpointing = forms.BooleanField(required=False, initial=DEFAULTS.gradient_checkpointing)
    snr_gamma = forms.FloatField(required=False, initial=DEFAULTS.snr_gamma, label="Min-SNR gamma",
                                 help_text="Empty: no min-SNR weighting.")  # fmt: skip
    caption_dropout = forms.FloatField(initial=DEFAULTS.caption_dropout)
    validation_prompts = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One per line, previewed with fixed seeds besides the held-out captions.",
    )
    validation_every = forms.IntegerField(initial=DEFAULTS.validation_every, label="Validation interval (steps)",
                                          help_text="0: validation images only at the end.")  # fmt: skip
    num_validation_images = forms.IntegerField(initial=DEFAULTS.num_validation_images,
                                               label="Validation images per prompt")  # fmt: skip
    validation_steps = forms.IntegerField(required=False, initial=DEFAULTS.validation_steps,
                                          label="Validation denoising steps",
                                          help_text="Empty: the family's usual (schnell 4, SD 25).")  # fmt: skip
    validation_guidance = forms.FloatField(required=False, initial=DEFAULTS.validation_guidance,
                                           label="Validation guidance scale",
                                           help_text="Empty: the family's usual value.")  # fmt: skip
    holdout_fraction = forms.FloatField(initial=DEFAULTS.holdout_fraction, label="Held-out fraction",
                                        help_text="Of the pack, set aside to evaluate on (0 to 0.5).")  # fmt: skip
    checkpoint_every = forms.IntegerField(initial=DEFAULTS.checkpoint_every, label="Checkpoint interval (steps)")
    compile = forms.BooleanField(required=False, initial=DEFAULTS.compile, label="torch.compile the denoiser",
                                 help_text="Faster long runs on a GPU, after a few minutes of compiling.")  # fmt: skip
    # Flow-matching families (FLUX, SD3, Qwen-Image, Z-Image, Chroma); Stable Diffusion ignores these.
    timestep_density = forms.ChoiceField(choices=[(d, d) for d in TIMESTEP_DENSITIES],
                                         initial=DEFAULTS.timestep_density,
                                         help_text="Flow matching: how training times are drawn.")  # fmt: skip
    logit_mean = forms.FloatField(initial=DEFAULTS.logit_mean, help_text="Flow matching: of the logit-normal density.")
    logit_std = forms.FloatField(initial=DEFAULTS.logit_std, help_text="Flow matching: of the logit-normal density.")
    mode_scale = forms.FloatField(initial=DEFAULTS.mode_scale, help_text="Flow matching: of the mode density.")
    loss_weighting = forms.ChoiceField(choices=[(w, w) for w in LOSS_WEIGHTINGS], initial=DEFAULTS.loss_weighting,
                                       help_text="Flow matching: the loss's weighting by noise level.")  # fmt: skip
    timestep_shift = forms.FloatField(required=False, initial=DEFAULTS.timestep_shift,
                                      help_text="Flow matching: empty for the base model's own shift.")  # fmt: skip
    guidance = forms.FloatField(initial=DEFAULTS.guidance, label="Guidance embedding while training",
                                help_text="Guidance-distilled models (FLUX.1 [dev]) only.")  # fmt: skip

    def hyperparameters(self) -> dict:
        data = dict(self.cleaned_data)
        data.pop("licence")
        data.pop("base_model_key")
        data["validation_prompts"] = [line.strip() for line in data["validation_prompts"].splitlines() if line.strip()]
        return data

    def add_service_errors(self, error) -> None:
        """A ValidationError from launch_run: keyed errors go to their fields, the rest to the form."""
        if hasattr(error, "error_dict"):
            for name, messages in error.message_dict.items():
                self.add_error(name if name in self.fields else None, messages)
        else:
            self.add_error(None, error.messages)
