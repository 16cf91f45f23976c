"""``redact``: gateway text cleaned of every credential form before the proxy shows it."""

from __future__ import annotations

import base64
from urllib.parse import quote, quote_plus

import pytest

from proxy.observe.redact import MASK, MAX_LENGTH, redact

ID = "us-east-1#6f0c-client"
SECRET = "p@ss/w+rd ~ with=odd&chars?"  # every character URL encoding treats specially
PAIR = f"{ID}:{SECRET}"


def b64(text: str, urlsafe: bool = False) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(text.encode()).decode()


FORMS = {
    "the secret": SECRET,
    "id:secret": PAIR,
    "base64": b64(PAIR),
    "base64 unpadded": b64(PAIR).rstrip("="),
    "base64url": b64(PAIR, urlsafe=True),
    "base64url unpadded": b64(PAIR, urlsafe=True).rstrip("="),
    "URL-encoded secret": quote(SECRET, safe=""),
    "URL-encoded secret, / kept": quote(SECRET),
    "form-encoded secret": quote_plus(SECRET),
    "URL-encoded id:secret": quote(PAIR, safe=""),
    "form-encoded id:secret": quote_plus(PAIR),
}


def test_the_pair_needs_padding_and_differs_between_alphabets() -> None:
    # Otherwise the padded/unpadded and standard/URL-safe cases would test nothing.
    assert b64(PAIR).endswith("=")
    assert b64(PAIR) != b64(PAIR, urlsafe=True)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_credential_form_is_masked(form: str) -> None:
    value = FORMS[form]
    cleaned = redact(f"invalid client ({value}) for this account", ID, SECRET)
    assert value not in cleaned
    assert SECRET not in cleaned
    assert MASK in cleaned
    assert cleaned.startswith("invalid client (")
    assert cleaned.endswith(") for this account")


@pytest.mark.parametrize("scheme", ["Basic", "Bearer", "basic", "BEARER"])
def test_scheme_credentials_are_masked_whatever_they_hold(scheme: str) -> None:
    for value in ("c29tZW9uZTplbHNl", "opaque-token.value_1~", "YWJj%3D%3D"):
        for sep in (" ", "=", ": "):
            cleaned = redact(f"header was {scheme}{sep}{value}, refused")
            assert value not in cleaned, (scheme, sep, value)
            assert f"{scheme}{sep}{MASK}" in cleaned


def test_jwt_shaped_strings_are_masked() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXZhbHVl"
    cleaned = redact(f"token {jwt} expired")
    assert cleaned == f"token {MASK} expired"
    assert redact(f"x{jwt}y").count("c2lnbmF0dXJl") == 0


def test_control_characters_become_spaces() -> None:
    cleaned = redact("line one\nline two\r\x1b[31mred\x00\u2028end\t")
    assert cleaned.isprintable()
    assert "\x1b" not in cleaned and "\n" not in cleaned
    assert cleaned.startswith("line one line two")


def test_a_secret_split_by_a_control_character_is_still_masked() -> None:
    cleaned = redact(f"[{SECRET}]\n", ID, SECRET)
    assert SECRET not in cleaned


def test_long_text_is_truncated() -> None:
    cleaned = redact("x" * 10_000)
    assert len(cleaned) == MAX_LENGTH
    assert cleaned.endswith("...")
    assert redact("short") == "short"


def test_truncation_never_leaves_part_of_a_masked_form() -> None:
    # Masking comes before truncation: the cut cannot expose a prefix of the secret.
    text = "a" * (MAX_LENGTH - 10) + SECRET
    cleaned = redact(text, ID, SECRET)
    assert SECRET[:8] not in cleaned


def test_without_credentials_plain_text_is_kept() -> None:
    assert redact("client disabled by the institution") == "client disabled by the institution"
    assert redact("") == ""
