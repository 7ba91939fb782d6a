from django import template

from marketplace.core.money import format_cents

register = template.Library()


@register.filter
def cents(amount, currency="usd"):
    """{{ order.amount_cents|cents:order.currency }} -> "$12.34"."""
    if amount is None or amount == "":
        return "—"
    return format_cents(int(amount), str(currency or "usd"))
