import pytest

from virtplan.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GiB", 2 * 1024**3),
        ("2GB", 2 * 1000**3),
        ("2 G", 2 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("512 mib", 512 * 1024**2),
        ("1.5GiB", 1536 * 1024**2),
        ("100", 100),
        ("100B", 100),
        (4096, 4096),
        ("1TiB", 1024**4),
    ],
)
def test_parse_size_accepts_binary_and_decimal_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["2 potatoes", "GiB", "", "-1GiB", "1,5GiB", True, None, 1.5, -3])
def test_parse_size_rejects_with_a_hint(bad):
    with pytest.raises(ValueError) as info:
        parse_size(bad)
    assert "GiB" in str(info.value) or "negative" in str(info.value)


def test_unknown_unit_message_lists_accepted_units():
    with pytest.raises(ValueError, match="unknown unit 'potatoes'.*KiB, MiB, GiB"):
        parse_size("2 potatoes")


@pytest.mark.parametrize(
    ("size", "text"), [(2 * 1024**3, "2 GiB"), (1536 * 1024**2, "1.50 GiB"), (512, "512 B"), (131072 * 1024, "128 MiB")]
)
def test_format_size(size, text):
    assert format_size(size) == text
