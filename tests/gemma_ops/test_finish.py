"""Finish checks and incremental detokenization, without a model: a fake tokenizer with word pieces, a skipped
special token and byte-fallback pieces that decodes like HF's Gemma tokenizer (Replace "▁", ByteFallback, Fuse)."""

from __future__ import annotations

import random

import pytest

from gemma_ops.finish import Finish, FinishChecker, IncrementalDetokenizer, StopStrings
from gemma_ops.sampling import SamplingParams

EOS = 1
WORDS = ["▁Hello", "▁world", "lo", ".", "▁the", "▁end", "\n", "abc.def", "▁wo", "rld", "é", "▁日本", "!"]


class FakeTokenizer:
    """ids 0 and 1: specials (decode to nothing); 10..: WORDS; 300..555: byte pieces <0x00>..<0xFF>."""

    def __init__(self, strip_leading_space: bool = False) -> None:
        self.strip_leading_space = strip_leading_space  # like SentencePiece's dummy prefix / HF's Strip decoder
        self.calls: list[int] = []  # length of every decoded id list

    @staticmethod
    def word(piece: str) -> int:
        return 10 + WORDS.index(piece)

    @staticmethod
    def byte_ids(text: str) -> list[int]:
        return [300 + b for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        self.calls.append(len(ids))
        out: list[str] = []
        run: list[int] = []  # consecutive byte pieces, decoded as one unit (HF ByteFallback)
        for token in [*ids, None]:
            if token is not None and token >= 300:
                run.append(token - 300)
                continue
            if run:
                try:
                    out.append(bytes(run).decode("utf-8"))
                except UnicodeDecodeError:
                    out.append("\ufffd" * len(run))
                run = []
            if token is not None and token >= 10:
                out.append(WORDS[token - 10].replace("▁", " "))
        text = "".join(out)
        return text[1:] if self.strip_leading_space and text.startswith(" ") else text


def _random_tokens(rng: random.Random, n: int) -> list[int]:
    """Words, specials and whole characters spelled as byte pieces, each followed by a word: decoding is local
    (two byte-spelled characters in a row are one byte run to HF, see the test below)."""
    tokens: list[int] = []
    while len(tokens) < n:
        kind = rng.random()
        if kind < 0.15:
            tokens.extend(FakeTokenizer.byte_ids(rng.choice("日é€🙂a")))
            tokens.append(FakeTokenizer.word(rng.choice(WORDS)))
        elif kind < 0.2:
            tokens.append(rng.choice([0, EOS]))
        else:
            tokens.append(FakeTokenizer.word(rng.choice(WORDS)))
    return tokens


@pytest.mark.parametrize("strip", [False, True])
def test_incremental_text_equals_full_decode_at_every_step(strip):
    tokenizer = FakeTokenizer(strip_leading_space=strip)
    rng = random.Random(0)
    for _ in range(50):
        tokens = _random_tokens(rng, 30)
        detok = IncrementalDetokenizer(tokenizer.decode)
        for k, token in enumerate(tokens, start=1):
            detok.push(token)
            full = tokenizer.decode(tokens[:k])
            assert detok.text + detok.pending == full
            assert detok.ends[k] == len(detok.text) and full.startswith(detok.text)
        assert detok.pending == "" and detok.text == tokenizer.decode(tokens)


def test_each_step_decodes_a_short_window_not_the_whole_output():
    tokenizer = FakeTokenizer()
    detok = IncrementalDetokenizer(tokenizer.decode)
    for token in [FakeTokenizer.word("▁Hello")] * 500:
        detok.push(token)
    assert detok.text == " Hello" * 500
    assert len(tokenizer.calls) <= 2 * 500 and max(tokenizer.calls) <= 2


def test_skipped_tokens_do_not_grow_the_window():
    """A model may repeat <eos> under ignore_eos: each step still decodes a couple of tokens only."""
    tokenizer = FakeTokenizer()
    detok = IncrementalDetokenizer(tokenizer.decode)
    tokens = [FakeTokenizer.word("▁Hello"), *[EOS] * 300, *FakeTokenizer.byte_ids("é"), 0, FakeTokenizer.word("!")]
    for token in tokens:
        detok.push(token)
    assert max(tokenizer.calls) <= 4  # the context piece, the two bytes of é and one skipped token
    assert detok.text == " Helloé!" == tokenizer.decode(tokens)


def test_an_unfinished_character_stays_pending_until_its_last_byte():
    tokenizer = FakeTokenizer()
    detok = IncrementalDetokenizer(tokenizer.decode)
    detok.push(FakeTokenizer.word("▁Hello"))
    states = []
    for byte in FakeTokenizer.byte_ids("日"):
        detok.push(byte)
        states.append((detok.text, detok.pending))
    assert states == [(" Hello", "\ufffd"), (" Hello", "\ufffd\ufffd"), (" Hello日", "")]
    assert detok.ends == [0, 6, 6, 6, 7]


def test_byte_spelled_characters_in_a_row_settle_one_by_one():
    """HF decodes a run of byte pieces as one unit: while 本 is unfinished, the whole run shows as U+FFFDs.
    The settled text keeps 日 meanwhile; only the pending tail differs from the full decode then."""
    tokenizer = FakeTokenizer()
    detok = IncrementalDetokenizer(tokenizer.decode)
    tokens = [FakeTokenizer.word("▁Hello"), *FakeTokenizer.byte_ids("日本")]
    settled = []
    for k, token in enumerate(tokens, start=1):
        detok.push(token)
        settled.append(detok.text)
        assert tokenizer.decode(tokens[:k]).startswith(" Hello")
    assert settled == [" Hello"] * 3 + [" Hello日"] * 3 + [" Hello日本"]
    assert detok.pending == "" and detok.text == tokenizer.decode(tokens)


def test_invalid_bytes_after_a_byte_spelled_character_keep_the_character():
    """HF's byte fallback turns the whole run [日 bytes, 0xE6] into U+FFFDs; the settled text keeps 日."""
    tokenizer = FakeTokenizer()
    tokens = [FakeTokenizer.word("▁Hello"), *FakeTokenizer.byte_ids("日"), 300 + 0xE6, FakeTokenizer.word("!")]
    detok = IncrementalDetokenizer(tokenizer.decode)
    for token in tokens:
        detok.push(token)
    assert detok.text == " Hello日\ufffd!" and detok.pending == ""
    assert detok.text == b" Hello\xe6\x97\xa5\xe6!".decode("utf-8", errors="replace")


def _reference_cut(decode, tokens: list[int], stops: tuple[str, ...]) -> tuple[int, str, int] | None:
    """The engine's former rule: decode everything each step; keep = fewest tokens whose text reaches the cut."""
    for step in range(1, len(tokens) + 1):
        text = decode(tokens[:step])
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        if cut >= 0:
            keep = next(k for k in range(step + 1) if len(decode(tokens[:k])) >= cut)
            return step, text[:cut], keep
    return None


def _first_cut(decode, tokens: list[int], stops: tuple[str, ...]) -> tuple[int, str, int] | None:
    watcher = StopStrings(stops, decode)
    for step, token in enumerate(tokens, start=1):
        cut = watcher.push(token)
        if cut is not None:
            return step, cut.text, cut.keep
    return None


@pytest.mark.parametrize("strip", [False, True])
def test_stop_strings_cut_like_the_full_decode_rule(strip):
    """Without byte pieces, the incremental rule finds the same step, text and kept tokens as the former one."""
    decode = FakeTokenizer(strip_leading_space=strip).decode
    rng = random.Random(1)
    stop_sets = [(".",), ("lo wo", "\n"), ("world", "Hello"), ("d.d", "!"), ("the end",), ("ld.", " w")]
    found = 0
    for trial in range(300):
        tokens = [FakeTokenizer.word(rng.choice(WORDS)) if rng.random() > 0.1 else 0 for _ in range(20)]
        stops = stop_sets[trial % len(stop_sets)]
        expected = _reference_cut(decode, tokens, stops)
        assert _first_cut(decode, tokens, stops) == expected, (tokens, stops)
        found += expected is not None
    assert found > 200  # the stop strings really occur


def test_a_stop_string_spanning_tokens_keeps_the_token_that_completes_the_text():
    decode = FakeTokenizer().decode
    tokens = [FakeTokenizer.word(w) for w in ["▁Hello", "▁wo", "rld", "!", "▁the"]]
    assert _first_cut(decode, tokens, ("lo wor", "!")) == (3, " Hel", 1)  # " Hello" carries the stop's start
    assert _first_cut(decode, tokens, ("!", "ld")) == (3, " Hello wor", 3)  # earliest occurrence wins
    assert _first_cut(decode, tokens, (" Hello",)) == (1, "", 0)  # the output began with the stop string
    assert _first_cut(decode, [FakeTokenizer.word("abc.def")], (".",)) == (1, "abc", 1)


def test_stop_strings_over_byte_pieces_cut_at_whole_characters():
    decode = FakeTokenizer().decode
    hello = FakeTokenizer.word("▁Hello")
    tokens = [hello, *FakeTokenizer.byte_ids("日"), *FakeTokenizer.byte_ids("本"), FakeTokenizer.word("!")]
    # Found when the last byte of 本 arrives, not before; the kept text ends at 日, completed by its third byte.
    assert _first_cut(decode, tokens, ("本",)) == (7, " Hello日", 4)
    assert _first_cut(decode, tokens, ("日本!",)) == (8, " Hello", 1)
    assert _first_cut(decode, tokens, ("\ufffd",)) == (2, " Hello", 1)  # a pending byte shows as U+FFFD, as today
    rng = random.Random(2)
    for _ in range(200):
        tokens = _random_tokens(rng, 25)
        cut = _first_cut(decode, tokens, ("é", "🙂", "the", "日本"))
        if cut is None:
            continue
        _step, text, keep = cut
        assert decode(tokens[:keep]).startswith(text)  # the kept tokens make the kept text ...
        assert keep == 0 or not decode(tokens[: keep - 1]).startswith(text) or text == ""  # ... and no fewer do


def _checker(max_context: int = 100) -> FinishChecker:
    return FinishChecker(frozenset({EOS}), max_context, FakeTokenizer().decode)


def test_finish_reasons_in_order_eos_stop_string_length():
    checker = _checker(max_context=10)
    hello, dot = FakeTokenizer.word("▁Hello"), FakeTokenizer.word(".")
    params = SamplingParams(max_new_tokens=3, stop=("."))
    assert checker.check(params, [hello], 5, checker.stop_strings(params)) is None
    assert checker.check(params, [hello, EOS], 6, checker.stop_strings(params)) == Finish("stop")
    stops = checker.stop_strings(params)
    checker.check(params, [hello], 5, stops)
    assert checker.check(params, [hello, dot], 6, stops) == Finish("stop", " Hello", 1)
    # the token that reaches max_new_tokens also completes a stop string: the stop string wins
    stops = checker.stop_strings(params)
    for n, out in enumerate([[hello], [hello, hello]], start=5):
        assert checker.check(params, out, n, stops) is None
    assert checker.check(params, [hello, hello, dot], 8, stops) == Finish("stop", " Hello Hello", 2)
    assert checker.check(SamplingParams(max_new_tokens=3), [hello] * 3, 8, None) == Finish("length")
    assert checker.check(SamplingParams(), [hello], 10, None) == Finish("length")  # the context is full
    ignoring = SamplingParams(ignore_eos=True)
    assert checker.check(ignoring, [EOS], 5, None) is None
    assert checker.stop_strings(SamplingParams()) is None  # no stop strings: nothing is decoded while generating


def test_the_real_gemma_tokenizer_with_byte_fallback_characters(tiny_checkpoints):
    """The checkpoints' own tokenizer.json: rare characters (𓀀, ꙮ, 𝔘) are spelled as byte pieces."""
    from gemma_ops.tokenizer import GemmaTokenizer

    tokenizer = GemmaTokenizer.from_pretrained(tiny_checkpoints["gemma3"])
    text = "Hello 𓀀 world ꙮ! 日本語 🫠 naïve\n\nThe 𝔘 end."
    ids = tokenizer.encode(text, add_bos=False)
    assert len(ids) > len(text.split()) + 8  # the byte pieces are really there
    detok = IncrementalDetokenizer(tokenizer.decode)
    for k, token in enumerate(ids, start=1):
        detok.push(token)
        assert detok.text + detok.pending == tokenizer.decode(ids[:k])
    assert detok.text == text
    for stops, kept_text in [(("world",), "Hello 𓀀 "), (("ꙮ!",), "Hello 𓀀 world "), (("end",), text[:-4])]:
        step, cut_text, keep = _first_cut(tokenizer.decode, ids, stops)
        assert stops[0] in tokenizer.decode(ids[:step]) and stops[0] not in tokenizer.decode(ids[: step - 1])
        assert cut_text == kept_text
        assert tokenizer.decode(ids[:keep]).startswith(kept_text)
        assert not tokenizer.decode(ids[: keep - 1]).startswith(kept_text)
