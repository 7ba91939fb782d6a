from django.core.management.base import BaseCommand

from marketplace.catalog import services


class Command(BaseCommand):
    help = "Queue processing again for images still marked processing (e.g. after a broker was wiped)."

    def add_arguments(self, parser):
        parser.add_argument("--include-failed", action="store_true", help="Also retry images whose processing failed.")

    def handle(self, *args, include_failed, **options):
        count = services.requeue_unfinished(include_failed=include_failed)
        self.stdout.write(f"Queued {count} image(s).")
