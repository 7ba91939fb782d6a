from django.core.exceptions import ValidationError
from django.dispatch import receiver

from marketplace.catalog.signals import asset_withdrawn, takedown_lifting
from marketplace.curation.signals import assets_analysed
from marketplace.packs import selectors, services


@receiver(asset_withdrawn)
def revoke_withdrawn_asset(sender, asset_id, reason, **kwargs):
    services.revoke_asset(asset_id, reason=reason)


@receiver(takedown_lifting)
def refuse_lifting_a_published_takedown(sender, asset_id, **kwargs):
    versions = selectors.versions_depending_on_takedown(asset_id)
    if versions:
        names = ", ".join(str(version) for version in versions)
        raise ValidationError(
            f"This takedown can no longer be lifted: {names} held the image, so its public revocation list "
            "names it as taken down, its licensees were told to delete it, and it is no longer sold. "
            "A published record never changes."
        )


@receiver(assets_analysed)
def publish_waiting_packs(sender, asset_ids, **kwargs):
    services.publish_waiting_packs()
