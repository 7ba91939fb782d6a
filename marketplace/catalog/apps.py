from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "marketplace.catalog"
    label = "catalog"

    def ready(self):
        from django.conf import settings
        from PIL import Image

        # Pillow warns above MAX_IMAGE_PIXELS and refuses at twice that; our validation
        # turns the warning into a rejection, so both follow the UPLOAD_MAX_PIXELS setting.
        Image.MAX_IMAGE_PIXELS = settings.UPLOAD_MAX_PIXELS
