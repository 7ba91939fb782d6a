from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """Fine-tuning runs on purchased packs. The Django-free engine lives in training.engine."""

    name = "training"

    def ready(self):
        from training import receivers  # noqa: F401  (connects the signal handlers)
