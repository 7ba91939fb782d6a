"""A real CLIP tokenizer (vocab.json + merges.txt) rebuilt offline from open_clip's bundled BPE vocabulary.

The files are the ones Stable Diffusion's `tokenizer/` folder holds: the same 49408 ids as OpenAI's CLIP,
so ids match open_clip's tokenizer. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
VOCAB_SIZE = 49408  # 256 bytes + 256 end-of-word bytes + 48894 merges + 2 special tokens


def _bpe_path() -> Path:
    """open_clip's bundled BPE file, located without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The CLIP vocabulary comes from open_clip: pip install open-clip-torch")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (as CLIP and open_clip use it)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 1 + VOCAB_SIZE - 512 - 2]  # the first 48894 merges, as CLIP and open_clip use
    symbols = list(_bytes_to_unicode().values())
    symbols += [symbol + "</w>" for symbol in symbols]
    symbols += ["".join(merge.split()) for merge in merges]
    symbols += [START_TOKEN, END_TOKEN]
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"open_clip's BPE file gave {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def write_clip_tokenizer_files(folder: Path) -> None:
    """Write vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "special_tokens_map.json": json.dumps(
            {"bos_token": START_TOKEN, "eos_token": END_TOKEN, "unk_token": END_TOKEN, "pad_token": END_TOKEN}
        ),
        "tokenizer_config.json": json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": MODEL_MAX_LENGTH,
                "do_lower_case": True,
                "bos_token": START_TOKEN,
                "eos_token": END_TOKEN,
                "unk_token": END_TOKEN,
                "pad_token": END_TOKEN,
                "errors": "replace",
            }
        ),
    }
    for name, text in files.items():
        temporary = folder / f".{name}.tmp"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, folder / name)


def build_clip_tokenizer(folder: Path):
    """Write the tokenizer files into `folder` and return `CLIPTokenizer.from_pretrained(folder)`."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(str(folder))
