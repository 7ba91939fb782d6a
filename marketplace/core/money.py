"""Money is integer cents everywhere; these show it, with integer arithmetic only (no float ever rounds a cent)."""

SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


def format_cents(cents: int, currency: str = "usd") -> str:
    """12345, "usd" -> "$123.45"; -50 -> "-$0.50"; 12345, "chf" -> "123.45 CHF"."""
    sign = "-" if cents < 0 else ""
    figure = f"{abs(cents) // 100:,}.{abs(cents) % 100:02d}"
    symbol = SYMBOLS.get(currency.lower())
    return f"{sign}{symbol}{figure}" if symbol else f"{sign}{figure} {currency.upper()}"


def plain_amount(cents: int) -> str:
    """12345 -> "123.45", for CSV cells that spreadsheets read as numbers."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"
