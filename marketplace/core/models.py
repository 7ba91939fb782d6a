from django.core.exceptions import ValidationError
from django.db import models


class WriteOnceModel(models.Model):
    """A row written once and never changed or deleted (published versions, the ledger).

    Subclasses say what to do instead in `change_refused`; `{name}` is the model's verbose name.
    """

    change_refused = "A {name} never changes once written."

    class Meta:
        abstract = True

    def _refuse(self):
        raise ValidationError(self.change_refused.format(name=self._meta.verbose_name))

    def save(self, *args, **kwargs):
        if not self._state.adding:
            self._refuse()
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        self._refuse()
