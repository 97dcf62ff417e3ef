"""A sample's text stream (led_local/textstream.py) alone, no model: tokens are byte strings of a made-up
vocabulary, so each case says exactly which bytes arrive when."""

from __future__ import annotations

import random

from led_local.textstream import TextStream, held_back

EURO = "€".encode()  # 3 bytes


def run(pieces: list[bytes], stops: list[str]) -> tuple[list[str], str, bool]:
    """Feed each piece as one token, taking a delta after each as the scheduler does; the sample ends after
    the last piece or at a stop string. Returns the deltas, their concatenation, and whether a
    stop string ended it."""
    stream = TextStream(lambda t: pieces[t], stops)
    deltas, stopped = [], False
    for t in range(len(pieces)):
        stopped = stream.feed(t)
        deltas.append(stream.delta(final=stopped))
        if stopped:
            break
    if not stopped:  # ended by length or end-of-generation: the last delta is final
        deltas.append(stream.delta(final=True))
    assert stream.delta(final=True) == ""  # nothing is handed out twice
    return deltas, "".join(deltas), stopped


def test_a_stop_string_across_tokens_cuts_the_text_before_it():
    deltas, text, stopped = run([b"Count: 1,", b" 2", b", 3", b", 4", b", 5", b", 6"], [", 4"])
    assert stopped and text == "Count: 1, 2, 3"
    assert "".join(deltas[:2]) == "Count: 1, 2"  # (nothing that ", 4" could claim is held before it can)


def test_the_earliest_of_several_stop_strings_wins():
    _, text, stopped = run([b"alpha beta", b" gamma"], ["gamma", "beta"])
    assert stopped and text == "alpha "


def test_a_stop_string_inside_one_token():
    _, text, stopped = run([b"one", b"two\nthree", b"four"], ["\n"])
    assert stopped and text == "onetwo"


def test_a_partial_stop_match_is_held_back_then_released_when_it_does_not_grow():
    deltas, text, stopped = run([b"The end", b" of", b" the road"], ["<|end|>", " of the sea"])
    assert not stopped and text == "The end of the road"
    assert deltas[0] == "The end"         # "<|end|>" needs "<" first: nothing held
    assert deltas[1] == ""                # " of" could grow into " of the sea"
    assert deltas[2] == " of the road"    # it did not: released


def test_the_held_back_tail_is_handed_out_when_the_sample_ends():
    # the sample ends (by length or end of generation: the scheduler asks for the final delta either way)
    # while its end could still have grown into a stop string: that end is text, not a stop
    deltas, text, stopped = run([b"Answer: 42", b" Q"], ["Q:"])
    assert not stopped
    assert deltas == ["Answer: 42", " ", "Q"] and text == "Answer: 42 Q"


def test_a_character_split_across_tokens_streams_whole():
    deltas, text, _ = run([b"price ", EURO[:1], EURO[1:2], EURO[2:], b"5"], [])
    assert text == "price €5"
    assert deltas[:4] == ["price ", "", "", "€"]
    assert "\ufffd" not in text


def test_bytes_that_never_finish_a_character_become_one_replacement_at_the_end():
    deltas, text, _ = run([b"ok ", EURO[:2]], [])
    assert deltas == ["ok ", "", "\ufffd"] and text == "ok \ufffd"


def test_a_stop_string_that_ends_in_a_split_character():
    _, text, stopped = run([b"cost ", EURO[:1], EURO[1:], b"", EURO[2:], b" more"], ["€"])
    assert stopped and text == "cost "


def test_empty_stop_strings_are_no_stop_strings():
    _, text, stopped = run([b"a", b"b"], ["", "b"])
    assert stopped and text == "a"
    assert held_back("abc", ["", "cd"]) == 1


def test_tokens_fed_after_a_stop_are_ignored():
    stream = TextStream(lambda t: [b"xy", b"STOP", b"more"][t], ["STOP"])
    assert not stream.feed(0) and stream.feed(1) and stream.feed(2)
    assert stream.delta(final=True) == "xy"


def test_held_back_is_the_longest_end_that_is_a_proper_prefix_of_a_stop():
    assert held_back("hello wor", ["world"]) == 3
    assert held_back("hello w", ["world", "o world"]) == 3  # the longer claim wins: "o w" begins "o world"
    assert held_back("say hello wo", ["hello world"]) == 8
    assert held_back("world", ["world"]) == 0  # a whole stop is found, not held


def test_random_pieces_give_the_text_a_whole_decode_would():
    # any cut of a text into tokens, with any stops: the deltas add up to the text up to the earliest stop
    rng = random.Random(7)
    alphabet = ["a", "b", "ab", " ", "€", "é", "\n", "<|", "|>"]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        data = text.encode()
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 12)))) if len(data) > 1 else []
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])] or [b""]
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(0, 3))]
        deltas, got, stopped = run(pieces, stops)
        hits = [p for p in (text.find(s) for s in stops) if p >= 0]
        # a stop that would need the stream to look back past what it already cut cannot occur here:
        # the whole text is known, so its first stop is where the stream must cut
        assert got == (text[: min(hits)] if hits else text), (pieces, stops)
        assert stopped == bool(hits)
