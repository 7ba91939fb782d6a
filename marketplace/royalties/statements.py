"""The monthly statement as CSV: what a creator's accountant imports."""

import csv

from marketplace.core.money import plain_amount
from marketplace.royalties.selectors import Statement

HEADER = ["date", "transaction", "order", "pack", "version", "asset_id", "title", "amount_cents", "amount"]


def _text(value: str) -> str:
    """Titles come from users: a cell starting with = + - @ would run as a formula in a spreadsheet."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def write_csv(statement: Statement, out) -> None:
    writer = csv.writer(out)
    month_end = statement.closing_date
    writer.writerow([*HEADER[:-1], f"amount_{statement.currency}"])
    writer.writerow(_summary(statement.month, "opening balance", statement.opening_cents))
    for row in statement.rows:
        writer.writerow(
            [
                row.date.isoformat(),
                row.kind,
                row.order_id or "",
                _text(row.pack),
                row.version or "",
                row.asset_id or "",
                _text(row.title),
                row.amount_cents,
                plain_amount(row.amount_cents),
            ]
        )
    writer.writerow(_summary(month_end, "total", statement.total_cents))
    writer.writerow(_summary(month_end, "closing balance", statement.closing_cents))


def _summary(day, label: str, cents: int) -> list:
    return [day.isoformat(), label, "", "", "", "", "", cents, plain_amount(cents)]
