"""CLIP's byte-level BPE tokenizer, written for this project and id-for-id compatible with OpenAI's.

    tokens = tokenize(["a photo of a dog.", "a photo of a cat."])   # (2, 77) int64

Each row is `<|startoftext|>` (49406), the BPE ids of the cleaned, lower-cased text,
`<|endoftext|>` (49407), then zeros. Ids: 0-255 the byte symbols, 256-511 the same closing a word
(`</w>`), 512-49405 the merges of OpenAI's `bpe_simple_vocab_16e6.txt.gz` (shipped in this folder,
MIT notice in LICENSE-CLIP.txt) in rank order, then the two special tokens.
"""
from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Tuple, Union

import ftfy
import regex
import torch

VOCAB_FILE = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
N_MERGES = 49152 - 256 - 2          # the merges OpenAI uses from the file (after its header line)

# Pieces BPE runs on: a special token, an English contraction, a run of letters, one digit, or a
# run of other non-space characters. Applied to lower-cased text.
_PIECES = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE)
_SPACES = regex.compile(r"\s+")


def byte_symbols() -> List[str]:
    """The printable character standing for each byte value 0..255 (index = byte): printable
    Latin-1 bytes stand for themselves, the 68 others get chr(256), chr(257), ... in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) if b in printable else chr(256 + others.index(b)) for b in range(256)]


def clean(text: str) -> str:
    """Repair mojibake (ftfy), undo HTML escaping twice, collapse whitespace, strip, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _SPACES.sub(" ", text).strip().lower()


class Tokenizer:
    """Byte-level BPE over OpenAI's CLIP vocabulary: `encode(str) -> ids`, `decode(ids) -> str`."""

    def __init__(self, vocab_file: Union[str, Path] = VOCAB_FILE):
        with gzip.open(vocab_file, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:1 + N_MERGES]]
        if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{vocab_file}: expected a header line and {N_MERGES} merges "
                             f"'a b', one a line (OpenAI's bpe_simple_vocab_16e6.txt.gz)")
        self.byte_symbol = byte_symbols()
        self.symbol_byte = {s: b for b, s in enumerate(self.byte_symbol)}
        base = sorted(self.byte_symbol, key=ord)
        tokens = base + [s + END_OF_WORD for s in base] + [a + b for a, b in merges] + [SOT, EOT]
        self.token_id: Dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.id_token: List[str] = tokens
        self.rank: Dict[Tuple[str, str], int] = {m: r for r, m in enumerate(merges)}
        self.sot_id, self.eot_id = self.token_id[SOT], self.token_id[EOT]
        self.vocab_size = len(tokens)
        self._piece_ids = lru_cache(maxsize=1 << 18)(self._encode_piece)

    def _encode_piece(self, piece: str) -> Tuple[int, ...]:
        """A special token or a piece -> ids: its UTF-8 bytes as symbols, the lowest-ranked
        adjacent pair merged first, until no pair merges."""
        if piece in (SOT, EOT):
            return (self.token_id[piece],)
        symbols = [self.byte_symbol[b] for b in piece.encode("utf-8")]
        parts = symbols[:-1] + [symbols[-1] + END_OF_WORD]
        while len(parts) > 1:
            pairs = [(self.rank.get(p, N_MERGES), p) for p in zip(parts, parts[1:])]
            best_rank, (a, b) = min(pairs)
            if best_rank == N_MERGES:
                break
            i = 0
            while i < len(parts) - 1:       # merge every (a, b), left to right
                if (parts[i], parts[i + 1]) == (a, b):
                    parts[i:i + 2] = [a + b]
                i += 1
        return tuple(self.token_id[t] for t in parts)

    def encode(self, text: str) -> List[int]:
        """Text -> BPE ids, without the start/end tokens."""
        return [i for piece in _PIECES.findall(clean(text)) for i in self._piece_ids(piece)]

    def decode(self, ids: Union[Iterable[int], torch.Tensor]) -> str:
        """BPE ids -> text; every word is followed by a space, undecodable bytes become U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        symbols = "".join(self.id_token[i] for i in ids)
        data = bytes(self.symbol_byte[c] for c in symbols)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")


@lru_cache(maxsize=None)
def default_tokenizer() -> Tokenizer:
    """The shared tokenizer over the packaged vocabulary (built once, ~1 s)."""
    return Tokenizer()


def tokenize(texts: Union[str, List[str]], context_length: int = 77,
             truncate: bool = False) -> torch.Tensor:
    """Texts -> token ids (N, context_length) int64, zero-padded, as OpenAI's `clip.tokenize`.

    A text longer than `context_length` (counting start and end tokens) raises ValueError,
    unless `truncate`: then it is cut and its last id is `<|endoftext|>`.
    """
    if isinstance(texts, str):
        texts = [texts]
    tok = default_tokenizer()
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects str or a list of str; item {row} is "
                            f"{type(text).__name__}: {text!r}")
        ids = [tok.sot_id] + tok.encode(text) + [tok.eot_id]
        if len(ids) > context_length:
            if not truncate:
                shown = text if len(text) <= 60 else text[:60] + "..."
                raise ValueError(
                    f"text {shown!r} is {len(ids)} tokens long with its start/end tokens, more "
                    f"than the context length {context_length}; shorten it or pass truncate=True")
            ids = ids[:context_length - 1] + [tok.eot_id]
        out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out
