from django.dispatch import Signal

# Sent after commit when a batch of assets has been analysed; receivers get `asset_ids`.
# Packs listen: a pack waiting for eligible images publishes its first version.
assets_analysed = Signal()
