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


# --- T5 and Qwen tokenizers, made offline (tiny models of the flow-matching families) --------------------------
#
# Real base models ship their tokenizers; tiny test and demo models need ones that load through the same
# `from_pretrained(folder)` calls (T5TokenizerFast for Flux, SD3 and Chroma's T5; Qwen2Tokenizer with a chat
# template for Qwen-Image, Z-Image and Flux.2 klein). Both are derived from the CLIP vocabulary above, so they
# tokenize English into real sub-words, and hold SMALL_VOCAB_SIZE tokens so the tiny encoders stay tiny.

SMALL_VOCAB_SIZE = 1024
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<think>",
    "</think>",
)
# Qwen's chat format, as the Qwen2.5/Qwen3 tokenizers' templates render a conversation (no tools).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def _small_merges(count: int) -> list[str]:
    """The first CLIP merges whose parts and result are inside a word (no end-of-word marker)."""
    _, merges = _vocab_and_merges()
    return [merge for merge in merges if "</w>" not in merge][:count]


def _save_fast_tokenizer(tokenizer, folder: Path, tokenizer_class: str, **config) -> None:
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **config)
    fast.save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    saved = json.loads(config_path.read_text())
    saved["tokenizer_class"] = tokenizer_class
    temporary = folder / ".tokenizer_config.json.tmp"
    temporary.write_text(json.dumps(saved, ensure_ascii=False))
    os.replace(temporary, config_path)


def write_t5_tokenizer_files(folder: Path, *, max_length: int = 77) -> None:
    """A T5-style tokenizer (SentencePiece-like Unigram over "▁"-prefixed pieces, </s> appended, <pad> = 0)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    byte_symbols = sorted({s for s in _bytes_to_unicode().values() if s.isascii() and s.isprintable()})
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(symbol, -10.0) for symbol in byte_symbols]
    pieces += [("▁" + symbol, -9.0) for symbol in byte_symbols]
    seen = {piece for piece, _ in pieces}
    for number, merge in enumerate(_small_merges(4 * SMALL_VOCAB_SIZE)):
        symbol = "".join(merge.split())
        for piece in (symbol, "▁" + symbol):
            if len(pieces) < SMALL_VOCAB_SIZE and piece not in seen:
                pieces.append((piece, -1.0 - number / 1000))
                seen.add(piece)
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    _save_fast_tokenizer(
        tokenizer,
        folder,
        "T5TokenizerFast",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=max_length,
    )


def build_t5_tokenizer(folder: Path, *, max_length: int = 77):
    from transformers import AutoTokenizer

    write_t5_tokenizer_files(folder, max_length=max_length)
    return AutoTokenizer.from_pretrained(str(folder))


def write_qwen_tokenizer_files(folder: Path, *, max_length: int = 512) -> None:
    """A Qwen2-style byte-level BPE tokenizer with Qwen's special tokens and chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    symbols = list(_bytes_to_unicode().values())
    merges = []
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    for merge in _small_merges(4 * SMALL_VOCAB_SIZE):
        if len(vocab) >= SMALL_VOCAB_SIZE - len(QWEN_SPECIAL_TOKENS):
            break
        left, right = merge.split()
        if left in vocab and right in vocab and left + right not in vocab:
            vocab[left + right] = len(vocab)
            merges.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in QWEN_SPECIAL_TOKENS])
    _save_fast_tokenizer(
        tokenizer,
        folder,
        "Qwen2Tokenizer",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=max_length,
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def build_qwen_tokenizer(folder: Path, *, max_length: int = 512):
    from transformers import AutoTokenizer

    write_qwen_tokenizer_files(folder, max_length=max_length)
    return AutoTokenizer.from_pretrained(str(folder))
