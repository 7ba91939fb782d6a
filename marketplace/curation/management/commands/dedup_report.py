import csv
import sys

from django.core.management.base import BaseCommand

from marketplace.curation import selectors


class Command(BaseCommand):
    help = "Duplicate clusters and cross-creator flags as CSV (to stdout, or --output FILE)."

    def add_arguments(self, parser):
        parser.add_argument("--output", help="Write to this file instead of standard output.")

    def handle(self, *args, output, **options):
        handle = open(output, "w", newline="") if output else sys.stdout
        try:
            writer = csv.writer(handle)
            writer.writerow(
                ["kind", "group", "asset_id", "creator", "title", "representative", "other_asset_id",
                 "other_creator", "cosine", "hamming", "status"]
            )  # fmt: skip
            for row in selectors.dedup_report_rows():
                writer.writerow(row)
        finally:
            if output:
                handle.close()
