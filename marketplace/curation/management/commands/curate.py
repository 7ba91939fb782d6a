from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from marketplace.curation import services
from marketplace.curation.engine.clip import ModelUnavailable


class Command(BaseCommand):
    help = "Analyse every ready image still awaiting analysis (or analysed by another model)."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=64)

    def handle(self, *args, batch_size, **options):
        pending = services.pending_asset_ids()
        if not pending:
            self.stdout.write("Nothing awaits analysis.")
            return
        analysed = failed = 0
        with tqdm(total=len(pending), unit="image", desc="Analysing", disable=options["verbosity"] == 0) as bar:
            for start in range(0, len(pending), batch_size):
                batch = pending[start : start + batch_size]
                try:
                    report = services.analyse_assets(batch)
                except ModelUnavailable as error:
                    raise CommandError(str(error)) from None
                analysed += len(report.analysed)
                failed += len(report.failed)
                bar.update(len(batch))
        self.stdout.write(self.style.SUCCESS(f"Analysed {analysed} image(s); {failed} failed."))
