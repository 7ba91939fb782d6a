import re
from decimal import Decimal

from django import forms

from marketplace.catalog import licences
from marketplace.core.ids import ID_RANGE, parse_id, shown
from marketplace.packs.models import Pack

# Stripe's smallest charge in US dollars.
MIN_PRICE = Decimal("0.50")
MAX_PRICE = Decimal("1000000.00")


class AssetIdsField(forms.CharField):
    """Image ids separated by commas or spaces, e.g. "12, 15 40"."""

    def to_python(self, value) -> list[int]:
        text = super().to_python(value)
        ids = []
        for token in re.split(r"[\s,;]+", text.strip()):
            if not token:
                continue
            number = parse_id(token)
            if number is None:
                raise forms.ValidationError(
                    f"“{shown(token)}” is not an image id: give whole numbers separated by commas. {ID_RANGE}"
                )
            ids.append(number)
        return list(dict.fromkeys(ids))


class PackForm(forms.Form):
    title = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=80, help_text="Part of the pack's address, e.g. city-streets.")
    description = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="What the pack is for (the datasheet's motivation).",
    )
    use = forms.ChoiceField(
        choices=Pack.Use.choices, help_text="Commercial packs take only commercially licensed images."
    )
    price = forms.DecimalField(
        label="Price (US dollars)",
        max_digits=9,
        decimal_places=2,
        min_value=MIN_PRICE,
        max_value=MAX_PRICE,
        error_messages={
            "min_value": f"The price must be at least ${MIN_PRICE} (the smallest card payment).",
            "max_value": f"The price can be at most ${MAX_PRICE:,}.",
            "max_decimal_places": "Give the price in dollars and cents, e.g. 49.99.",
            "invalid": "Give the price as a number of dollars, e.g. 49.99.",
        },
    )
    query = forms.CharField(required=False, max_length=300, help_text="Ranks the images by CLIP, e.g. “city at night”.")
    tag = forms.CharField(required=False, max_length=50)
    licence = forms.ChoiceField(choices=[("", "Any licence"), *licences.CHOICES], required=False)
    creator = forms.CharField(required=False, max_length=150, help_text="A creator's user name.")
    min_short_side = forms.IntegerField(required=False, min_value=0, max_value=20000, label="Min. short side (px)")
    picks = AssetIdsField(required=False, help_text="Image ids always included when eligible.")
    removals = AssetIdsField(required=False, help_text="Image ids never included.")
    size = forms.IntegerField(
        required=False, min_value=1, max_value=1_000_000, help_text="At most this many images, sampled for diversity."
    )
    is_listed = forms.BooleanField(required=False, initial=True, label="Listed in the public catalogue")

    @staticmethod
    def initial_for(pack: Pack) -> dict:
        filters = pack.filters or {}
        return {
            "title": pack.title,
            "slug": pack.slug,
            "description": pack.description,
            "use": pack.use,
            "price": (Decimal(pack.price_cents) / 100).quantize(Decimal("0.01")),
            "query": pack.query,
            "tag": filters.get("tag", ""),
            "licence": filters.get("licence", ""),
            "creator": filters.get("creator", ""),
            "min_short_side": filters.get("min_short_side"),
            "picks": ", ".join(map(str, pack.picks)),
            "removals": ", ".join(map(str, pack.removals)),
            "size": pack.size,
            "is_listed": pack.is_listed,
        }

    def pack_fields(self) -> dict:
        """The cleaned data as `services.save_pack` takes it."""
        data = self.cleaned_data
        return {
            "title": data["title"],
            "slug": data["slug"],
            "description": data["description"],
            "use": data["use"],
            "price_cents": int(data["price"] * 100),
            "query": data["query"],
            "filters": {
                "tag": data["tag"].strip().lower(),
                "licence": data["licence"],
                "creator": data["creator"].strip(),
                "min_short_side": data["min_short_side"] or 0,
            },
            "picks": data["picks"],
            "removals": data["removals"],
            "size": data["size"],
            "is_listed": data["is_listed"],
        }
