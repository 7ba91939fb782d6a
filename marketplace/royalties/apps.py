from django.apps import AppConfig


class RoyaltiesConfig(AppConfig):
    name = "marketplace.royalties"
    label = "royalties"
