"""The licences a creator can put on an image, with terms a person can read.

Codes are stored on assets and frozen into pack versions, so a code's meaning never
changes; a new version of a licence gets a new code.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Licence:
    code: str
    name: str
    summary: str
    terms: tuple[str, ...]
    allows_ai_training: bool
    allows_commercial_models: bool
    requires_attribution: bool
    url: str = ""


LICENCES: tuple[Licence, ...] = (
    Licence(
        code="mkt-ai-commercial-1.0",
        name="Marketplace AI Training Licence, Commercial 1.0",
        summary="Buyers may train AI models on the image and use those models commercially.",
        terms=(
            "The licensee may copy the image into training data sets and train machine-learning models on it.",
            "Models trained on it, and their outputs, may be used and sold commercially.",
            "The image itself may not be redistributed, resold or published outside the licensee's organisation.",
            "The creator is paid a royalty on every sale of a pack that contains the image.",
            "The creator may withdraw the image from future packs; existing licensees keep their licence.",
        ),
        allows_ai_training=True,
        allows_commercial_models=True,
        requires_attribution=False,
    ),
    Licence(
        code="mkt-ai-research-1.0",
        name="Marketplace AI Training Licence, Research 1.0",
        summary="Buyers may train AI models on the image for non-commercial research only.",
        terms=(
            "The licensee may train machine-learning models on the image for non-commercial research.",
            "Models trained on it may not be sold or used in a commercial product or service.",
            "The image itself may not be redistributed or published outside the research group.",
            "The creator is paid a royalty on every sale of a pack that contains the image.",
        ),
        allows_ai_training=True,
        allows_commercial_models=False,
        requires_attribution=False,
    ),
    Licence(
        code="cc-by-4.0",
        name="Creative Commons Attribution 4.0",
        summary="Anyone may use the image for any purpose, including AI training, with credit to the creator.",
        terms=(
            "Share and adapt the image for any purpose, even commercially.",
            "Give appropriate credit to the creator and indicate if changes were made.",
        ),
        allows_ai_training=True,
        allows_commercial_models=True,
        requires_attribution=True,
        url="https://creativecommons.org/licenses/by/4.0/",
    ),
    Licence(
        code="cc0-1.0",
        name="CC0 1.0 Public Domain Dedication",
        summary="The creator waives all rights: anyone may use the image for anything.",
        terms=("No conditions: copy, modify, distribute and use the image, even commercially, without asking.",),
        allows_ai_training=True,
        allows_commercial_models=True,
        requires_attribution=False,
        url="https://creativecommons.org/publicdomain/zero/1.0/",
    ),
    Licence(
        code="all-rights-reserved",
        name="All rights reserved",
        summary="Stored in your library only; not licensed to buyers and never put in a pack.",
        terms=("No use by anyone but the creator.",),
        allows_ai_training=False,
        allows_commercial_models=False,
        requires_attribution=False,
    ),
)

BY_CODE = {licence.code: licence for licence in LICENCES}
CHOICES = [(licence.code, licence.name) for licence in LICENCES]


def get(code: str) -> Licence | None:
    return BY_CODE.get(code)
