from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "marketplace.core"
    label = "core"

    def ready(self):
        from django.urls import register_converter

        from marketplace.core.ids import IdConverter

        # Before any URLconf is imported: every app's urls.py writes ids as <id:...>.
        register_converter(IdConverter, "id")
