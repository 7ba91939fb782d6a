"""User text inside the Markdown documents we generate (MODEL_CARD.md, DATASHEET.md, README.md).

Titles, captions, tags, creators' names and pack descriptions are typed by people; the documents are
read rendered (Hugging Face, GitHub, any Markdown viewer), which would run their HTML and follow their
Markdown: `<img src=x onerror=...>`, `[click](http://evil)`, `![](tracker)`, a "# heading" or a "| table
row" of their own. Every piece of user text goes through `md_text` (one line: headings, list items,
table cells), `md_block` (paragraphs) or `md_code` (inside a code span) on its way in, and shows exactly
as typed once rendered, with nothing of it interpreted.

HTML's `<`, `>` and `&` become entities, which every Markdown flavour passes through as text (Markdown.pl
does not honour a backslash before `<`); Markdown's own punctuation gets a backslash (CommonMark's escape).
JSON files (manifests, metadata) keep the exact text: JSON is data, not markup.
"""

import re

# Markdown punctuation that can start emphasis, code, links and images, tables or strike-through anywhere.
_INLINE_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
# What makes a line a heading, a list item, a quote or a setext underline when it starts the line.
_LINE_START = re.compile(r"^(\s*)([#+=-]|\d+(?=[.)]))")
# `&` followed by what a renderer reads as an entity ("&lt;", "&#60;"); any other `&` is shown as it is.
_ENTITY = re.compile(r"&(?=#[0-9]+;|#[xX][0-9a-fA-F]+;|[A-Za-z][A-Za-z0-9]*;)")


def _escape_line(line: str) -> str:
    line = _ENTITY.sub("&amp;", line).replace("<", "&lt;").replace(">", "&gt;")
    line = _INLINE_SPECIAL.sub(r"\\\1", line)
    match = _LINE_START.match(line)
    if match:  # "1." → "1\.", "# x" → "\# x": nothing the user typed opens a block of its own
        spaces, marker = match.groups()
        if marker.isdigit():
            line = f"{spaces}{marker}\\{line[match.end() :]}"
        else:
            line = f"{spaces}\\{line[len(spaces) :]}"
    return line


def md_text(value) -> str:
    """One line of user text (a title, a name, a tag, a table cell): white space and line breaks collapse to
    single spaces, so the text cannot end the line, the list item or the table row it is put in."""
    return _escape_line(" ".join(str(value if value is not None else "").split()))


def md_block(value) -> str:
    """User text of several paragraphs (a description): its line breaks are kept, every line is escaped,
    and no line keeps leading spaces (which would make it code or part of the block above)."""
    lines = [" ".join(line.split()) for line in str(value if value is not None else "").splitlines()]
    text = "\n".join(_escape_line(line) if line else "" for line in lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def md_code(value) -> str:
    """User text shown as code (a base model's id or path): a code span whose backtick fence is longer than
    any run of backticks inside it, so the text cannot close it; its content is literal in every renderer."""
    text = " ".join(str(value if value is not None else "").split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") or not text.strip() else text
    return f"{fence}{padded}{fence}"
