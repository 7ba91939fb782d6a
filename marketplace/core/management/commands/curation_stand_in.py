"""Print, as JSON, what `runall` needs to curate the demo here: {"problem": why the configured curation model
cannot be loaded, or null; "env": the stand-in's settings, trained on first use, or {}}. A command of its own
so that torch and open_clip load in this short-lived process, not in runall, which only supervises."""

import json

from django.core.management.base import BaseCommand

from marketplace.core import demo_models


class Command(BaseCommand):
    help = "Check the curation model; when it cannot be had, train the demo's stand-in. Prints JSON."

    def handle(self, *args, **options):
        problem = demo_models.curation_model_problem()
        env = demo_models.curation_stand_in() if problem else {}
        self.stdout.write(json.dumps({"problem": problem, "env": env}))
