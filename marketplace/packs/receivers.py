from django.dispatch import receiver

from marketplace.catalog.signals import asset_withdrawn
from marketplace.curation.signals import assets_analysed
from marketplace.packs import services


@receiver(asset_withdrawn)
def revoke_withdrawn_asset(sender, asset_id, reason, **kwargs):
    services.revoke_asset(asset_id, reason=reason)


@receiver(assets_analysed)
def publish_waiting_packs(sender, asset_ids, **kwargs):
    services.publish_waiting_packs()
