"""dcp.clip.tokenizer against OpenAI's reference tokenizer (clip-anytorch): same ids, same text."""
import random

import pytest
import torch

from dcp.clip.tokenizer import Tokenizer, default_tokenizer, tokenize

HANDWRITTEN = [
    "", " ", "a", "A photo of a dog.", "a photo of a {}.", "ITAP of a CAT", "MiXeD CaSe WoRdS",
    "Hello &amp; world", "it&#39;s &quot;quoted&quot;", "&lt;b&gt;bold&lt;/b&gt;",
    "double &amp;amp; escaped", "triple &amp;amp;amp; escaped", "<p>markup &amp;amp; &lt;</p>", "&nbsp;non&nbsp;breaking", "&#x1F600; hex entity",
    "café naïve résumé jalapeño Ångström", "Straße ß ÆØÅ æøå œ", "Ελληνικά кириллица",
    "東京タワー 北京 서울", "日本語のテキストです。", "emoji 😀🐶🚀 ❤️ 👍🏽 👨‍👩‍👧", "🐈",
    "tabs\tand\nnewlines\r\nand   runs     of spaces", "  leading and trailing  ",
    "\u00a0nbsp\u2003em space\u3000ideographic", "zero\u200bwidth", "soft\u00adhyphen",
    "punctuation!!! ??? ... --- ;;; ::: ()[]{}", "don't won't it's we're they've I'm we'll he'd",
    "DON'T WON'T IT'S", "rock'n'roll o'clock", "3.14159 1,000,000 2023-01-01 42nd #1 $5 50%",
    "x = y + z * (a / b) ^ 2", "C++ C# F# .NET node.js", "e-mail: someone@example.com",
    "https://example.com/path?query=1&x=y#frag", "<|startoftext|>", "<|endoftext|>",
    "a <|endoftext|> inside", "</w>", "back\\slash `tick` ~tilde~ |pipe|", "\u00e9 vs e\u0301",
    "mojibake: Ã©tÃ© cafÃ©", "ﬁ ligature ﬂ", "full-width ＡＢＣ １２３", "superscript x² H₂O",
    "Ⅻ roman ½ fraction", "\x00control\x07chars\x1b", "\u200e\u200fbidi marks", "a" * 300,
    "word " * 100, "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a photo of a 2012 Chevrolet Corvette ZR1.", "a centered satellite photo of Annual Crop Land.",
    "a photo of a person doing Apply_Eye_Makeup.", "a photo of a pekinese, a type of pet.",
    "banded texture.", "a photo of a cheese-plant, a type of flower.",
]

_POOLS = [
    "dog cat car flower texture satellite photo image picture of a the".split(),
    list("abcdefghijklmnopqrstuvwxyz0123456789"),
    list(".,;:!?'\"()[]{}<>-_/\\@#$%^&*+=~`|"),
    ["&amp;", "&#39;", "&quot;", "&lt;", "&gt;", "&nbsp;", "&eacute;", "&#233;", "&#x27;"],
    list("éèêëàâäôöûüçñßøåæœÉÈÊÀÇÑ"), list("中文字日本語한국어ไทยالعربيةעברית"),
    ["😀", "🐶", "🚀", "❤️", "👍🏽", "🇫🇷", "✨", "🍕"], [" ", "  ", "\t", "\n", "\u00a0", "\u3000"],
    ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "n't"],
]


def _random_strings(n: int, seed: int = 0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 25)):
            pool = rng.choice(_POOLS)
            item = rng.choice(pool)
            parts.append(item.upper() if rng.random() < 0.2 else item)
            if rng.random() < 0.5:
                parts.append(" ")
        out.append("".join(parts))
    return out


STRINGS = HANDWRITTEN + _random_strings(300)


@pytest.fixture(scope="module")
def reference(openai_clip):
    from clip.simple_tokenizer import SimpleTokenizer
    return SimpleTokenizer()


def test_vocabulary_is_openais(reference):
    tok = default_tokenizer()
    assert tok.vocab_size == 49408
    assert tok.token_id == reference.encoder
    assert tok.rank == reference.bpe_ranks
    assert (tok.sot_id, tok.eot_id) == (49406, 49407)


def test_encode_and_decode_match_reference(reference):
    tok = Tokenizer()
    assert len(STRINGS) > 350
    for text in STRINGS:
        ids = tok.encode(text)
        assert ids == reference.encode(text), text
        assert tok.decode(ids) == reference.decode(ids), text
    assert tok.encode("A photo of a dog.") == [320, 1125, 539, 320, 1929, 269]


def test_decode_any_ids_matches_reference(reference):
    tok = default_tokenizer()
    ids = list(range(0, 49408, 7)) + [49406, 49407, 0, 256, 511, 512]
    assert tok.decode(ids) == reference.decode(ids)
    assert tok.decode(torch.tensor([320, 1125, 539, 320, 1929, 269])) == "a photo of a dog . "


def test_tokenize_matches_reference(openai_clip):
    short = [s for s in STRINGS if len(default_tokenizer().encode(s)) <= 75]
    assert len(short) > 300
    ours = tokenize(short)
    assert ours.dtype == torch.long and ours.shape == (len(short), 77)
    assert torch.equal(ours, openai_clip.tokenize(short))
    assert torch.equal(tokenize(STRINGS, truncate=True), openai_clip.tokenize(STRINGS, truncate=True))
    assert torch.equal(tokenize("a photo of a dog.", context_length=16),
                       openai_clip.tokenize("a photo of a dog.", context_length=16))


def test_tokenize_row_layout():
    row = tokenize("a dog")[0]
    assert row[:4].tolist() == [49406, 320, 1929, 49407]
    assert not row[4:].any()
    assert tokenize([]).shape == (0, 77)


def test_too_long_text_is_a_clear_error():
    text = "a very long description " * 30
    n = len(default_tokenizer().encode(text)) + 2
    with pytest.raises(ValueError) as err:
        tokenize(["short", text])
    message = str(err.value)
    assert "'a very long description a very long" in message and f"{n} tokens" in message
    assert "77" in message and "truncate=True" in message
    assert len(message) < 300


def test_truncate_keeps_eos_last():
    text = "word " * 100
    row = tokenize(text, truncate=True)[0]
    assert row[0] == 49406 and row[-1] == 49407 and (row == 49407).sum() == 1
    assert row[1:-1].tolist() == default_tokenizer().encode(text)[:75]
    exact = "a " * 75                                   # 75 words + SOT + EOT = 77: fits as is
    assert torch.equal(tokenize(exact), tokenize(exact, truncate=True))


def test_non_string_is_rejected():
    with pytest.raises(TypeError, match="item 1 is int"):
        tokenize(["ok", 3])
