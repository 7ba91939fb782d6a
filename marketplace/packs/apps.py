from django.apps import AppConfig


class PacksConfig(AppConfig):
    name = "marketplace.packs"
    label = "packs"

    def ready(self):
        from marketplace.packs import receivers  # noqa: F401  (connects the signal handlers)
