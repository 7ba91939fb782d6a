from django.dispatch import Signal

# Sent once an asset's processing has committed and it is ready; receivers get `asset_id`.
# Curation listens, so that the catalogue does not depend on it.
asset_ready = Signal()

# Sent after commit when a creator confirms rights over an embedded AI-training prohibition;
# receivers get `asset_id`. Curation puts such overrides in front of staff.
rights_override_confirmed = Signal()

# Sent after commit when a creator withdraws an image or their consent to AI training, or staff take
# it down; receivers get `asset_id` and `reason` ("withdrawn", "consent_withdrawn" or "takedown").
# Packs listen: the image leaves future versions and is named on published versions' revocation lists.
asset_withdrawn = Signal()

# Sent inside the transaction that would lift a staff takedown, before anything changes; receivers get
# `asset_id` and raise ValidationError to refuse. Packs refuse once a published version depends on the
# takedown (the catalogue cannot see packs, so it asks).
takedown_lifting = Signal()
