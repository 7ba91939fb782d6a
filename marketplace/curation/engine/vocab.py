"""Vocabularies that CLIP ranks against an image: zero-shot tags and the caption phrase banks.

The words live in text files under vocab/ (one entry a line, `#` comments) so that editors can
change them without touching code. Each is turned into CLIP prompts by a template.
"""

from dataclasses import dataclass
from functools import cache
from pathlib import Path

VOCAB_DIR = Path(__file__).with_name("vocab")
TAG_TEMPLATE = "a photo of {}"


@dataclass(frozen=True)
class PhraseBank:
    """Candidate phrases for one part of a caption, and how each is put to CLIP."""

    name: str
    template: str
    phrases: tuple[str, ...]
    required: bool  # required parts always appear in the caption; optional ones only when CLIP is confident

    def prompts(self) -> tuple[str, ...]:
        return tuple(self.template.format(phrase) for phrase in self.phrases)


def read_entries(path: Path) -> tuple[str, ...]:
    """Non-blank, non-comment lines, in file order, without duplicates."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(dict.fromkeys(line for line in lines if line and not line.startswith("#")))


@cache
def tags() -> tuple[str, ...]:
    return read_entries(VOCAB_DIR / "tags.txt")


@cache
def tag_prompts() -> tuple[str, ...]:
    return tuple(TAG_TEMPLATE.format(tag) for tag in tags())


@cache
def phrase_banks() -> tuple[PhraseBank, ...]:
    """In caption order: "{medium} of {subject}, {composition}, {lighting}, {style}"."""
    spec = (
        ("medium", "{}", True),
        ("subject", "a photo of {}", True),
        ("composition", "a photo, {}", False),
        ("lighting", "a photo with {}", False),
        ("style", "a photo, {}", False),
    )
    return tuple(
        PhraseBank(name, template, read_entries(VOCAB_DIR / f"{name}.txt"), required)
        for name, template, required in spec
    )
