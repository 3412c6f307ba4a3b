"""The PII masker of every log line (shared/logs.py `mask_pii`, issue 23): what it must catch, and
what it must leave alone, as a table."""

from __future__ import annotations

import sys

import pytest

from shared.logs import _MARKER_CHARS, _SECRET_MARKERS, _may_hold_pii, mask_pii


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # A secret's name followed by its value, with or without ":", "=", "é".
        ("minha senha 123456 obrigado", "minha senha *** obrigado"),
        ("senha: abc", "senha: ***"),
        ("password hunter2", "password ***"),
        ("PASSWORD=Tr0ub4dor3", "PASSWORD=***"),
        ("token abc123XYZ", "token ***"),
        ("o token é xyz", "o token é ***"),
        ("my password is correct-horse", "my password is ***"),
        # Phone numbers with dots, spaces or dashes.
        ("tel 11.98765.4321 ok", "tel **.*****.4321 ok"),
        ("tel 11 98765 4321", "tel ** ***** 4321"),
        ("tel 11-98765-4321", "tel **-*****-4321"),
        ("+55.11.98765.4321", "+**.**.*****.4321"),
        ("(11) 3456-7890", "(**) ****-7890"),
        # CPF and CNPJ, punctuated or not.
        ("cpf 529.982.247-25", "cpf ***.***.***-**"),
        ("cpf 52998224725", "cpf ***********"),
        ("CNPJ 11.222.333/0001-81", "CNPJ **.***.***/****-**"),
        ("cnpj 11222333000181.", "cnpj **************."),
        # E-mail addresses.
        ("maria@x.com.br e joao.silva@empresa.com", "m***@x.com.br e j***@empresa.com"),
        # Card numbers (Luhn-valid, 13 to 19 digits), grouped or not.
        ("card 4111 1111 1111 1111", "card **** **** **** 1111"),
        ("card 4111-1111-1111-1111", "card ****-****-****-1111"),
        ("visa 4111111111111111", "visa ************1111"),
        ("amex 3782 822463 10005", "amex **** ****** *0005"),
        ("visa13 4222222222222", "visa13 *********2222"),
        # A number inside an id is no phone; one after it, with a separator, still is.
        ("web:5d77af412345f33d08e14bb3:user:11987654321", "web:5d77af412345f33d08e14bb3:user:*******4321"),
        ("GET /bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getMe", "GET /bot***/getMe"),
        ("x.123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", "x.***"),
    ],
)
def test_masks(text: str, masked: str) -> None:
    assert mask_pii(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "esqueci minha senha",
        "senha forte",
        "token de acesso",
        "o pedido 12345 chegou",
        "R$ 1.234,56 total",
        "CEP 01310-100",
        "version 2024.01.15 and 1.45.2",
        "date 06.12.2026",
        "ip 10.20.30.40:5672",
        "took 12345678.5 ms at 2026-12-06T06:00:00Z",
        "uuid 550e8400-e29b-41d4-a716-446655440000",
        "shard 3 of 16, 1200 messages",
        "web:77796d66c3ea187e40527727:m-61cf73c605ac4aff9b80a4a03121914e",
        "sem dados pessoais aqui",
    ],
)
def test_leaves_alone(text: str) -> None:
    assert mask_pii(text) == text


def test_digits_inside_hex_ids_skip_the_full_masking() -> None:
    """The digits of a hex id (a message id's, a web scope's) have a letter or digit before them,
    which every number pattern refuses: such an id costs the quick check only."""
    assert not _may_hold_pii("web:5d77af412345f33d08e14bb3:d5bbc8343044407da15d5ef4a7b92206")
    assert _may_hold_pii("web:5d77af412345f33d08e14bb3:user:11987654321")
    # Nor the digits opening a hex id after its colon: a letter follows them.
    assert not _may_hold_pii("web:5d77af412345f33d08e14bb3:1234567890abcdef1234567890abcdef")
    assert _may_hold_pii("11987654321 ligou") and _may_hold_pii("chat:1234567")


def test_the_quick_scan_for_secret_markers_finds_every_one() -> None:
    """`_may_hold_pii` looks for the markers only in a text with one of `_MARKER_CHARS`: every
    marker has one, and no character lower-cases to one but those (the markers are searched in the
    lower-cased text)."""
    assert all(_MARKER_CHARS.search(marker) for marker in _SECRET_MARKERS)
    lowered_to_one = [c for c in map(chr, range(sys.maxunicode + 1)) if _MARKER_CHARS.search(c.lower())]
    assert lowered_to_one == sorted("/PRSTYprsty")
