from django.core.management.base import BaseCommand

from marketplace.curation import services


class Command(BaseCommand):
    help = "Rebuild the near-duplicate indexes from the stored embeddings and hashes."

    def handle(self, *args, **options):
        count = services.rebuild_indexes(progress=options["verbosity"] > 0)
        self.stdout.write(self.style.SUCCESS(f"Indexed {count} image(s)."))
