import pytest

from auditoryhum.labels import parse_labels


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Car horn, Busy street", ["car horn", "busy street"]),
        # punctuation other than commas is dropped, not turned into a space
        ("Dog's bark; loud!, rain-fall", ["dogs bark", "rainfall"]),
        # more than two words: the first two are kept
        ("birds singing in the morning, wind", ["birds singing", "wind"]),
        # non-ASCII characters are dropped, the rest of the word stays
        ("café chatter, 雨, naïve music", ["caf chatter", "nave music"]),
        # empties and whitespace-only parts vanish; inner whitespace collapses
        ("  , ,traffic\t\tnoise ,\n, ", ["traffic noise"]),
        # Unicode punctuation (curly quotes, ellipsis, dashes) counts as punctuation
        ("“Sirens”… — distant, ‘crowd’", ["sirens distant", "crowd"]),
        # hostile markup loses its punctuation
        ('<script>alert("x")</script>, <img src=x onerror=alert(1)>', ["scriptalertxscript", "img srcx"]),
        ("RAIN, rain", ["rain"]),
        ("", []),
        ("!!!", []),
    ],
)
def test_paper_post_processing(raw, expected):
    assert parse_labels(raw) == expected


def test_words_per_label_is_configurable():
    assert parse_labels("a very long label text, b", max_words=3) == ["a very long", "b"]
    with pytest.raises(ValueError):
        parse_labels("x", max_words=0)


@pytest.mark.parametrize("raw, expected", [
    # one pair a line, as models often answer: every line is a label (the authors turn newlines into ", ")
    ("Car horn\nBusy street", ["car horn", "busy street"]),
    ("1. Car horn\r\n2. Busy street\n\n3. Rain falling.", ["1 car", "2 busy", "3 rain"]),
    ("- Dog barking\n- Birds chirping, wind blowing", ["dog barking", "birds chirping", "wind blowing"]),
])
def test_line_breaks_separate_labels(raw, expected):
    assert parse_labels(raw) == expected
