from django.apps import AppConfig


class CurationConfig(AppConfig):
    name = "marketplace.curation"
    label = "curation"

    def ready(self):
        from marketplace.curation import receivers  # noqa: F401  (connects the signal handlers)
