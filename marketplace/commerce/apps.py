from django.apps import AppConfig


class CommerceConfig(AppConfig):
    name = "marketplace.commerce"
    label = "commerce"

    def ready(self):
        from marketplace.commerce import receivers  # noqa: F401  (connects the signal handlers)
