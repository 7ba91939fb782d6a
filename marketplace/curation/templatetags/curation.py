from django import template

from marketplace.curation import selectors

register = template.Library()


@register.inclusion_tag("curation/_holds.html")
def asset_holds(asset):
    """The holds keeping an asset out of packs, for its creator to see, with the reason."""
    return {"holds": list(selectors.active_holds(asset))}


@register.simple_tag
def is_held(asset) -> bool:
    # Over `asset.holds.all()`, which catalog's list selector prefetches: no query per card.
    return any(hold.is_active for hold in asset.holds.all())
