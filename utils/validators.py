"""Input rules shared by the validation models and the services: e-mail, phone, password,
names, URLs, slugs, control characters, JSON depth, the ranges numbers and dates must keep to,
and the seed's SQL-injection / XSS pattern detection for free text.

The pattern checks are a tripwire, not the defence: every query is parameterised through the
ORM and everything rendered is escaped. They are tuned to let ordinary prose through
("O'Brien", "C# & SQL: select the best index") and to catch the payloads scanners send.
"""
from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import date
from decimal import Decimal
from typing import Annotated
from urllib.parse import urlsplit

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

_SLUG_STRIP = re.compile(r"[^a-z0-9]+")
# A client's X-Request-ID is kept when it looks like an id; otherwise the request gets its own.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def slugify(text: str, max_length: int = 200) -> str:
    """ASCII, lower-case, dash-separated; an empty result becomes 'item'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = _SLUG_STRIP.sub("-", ascii_text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "item"


# --- what every input keeps to (utils/validation.py applies these to every model) -----------

# Text: NUL is refused everywhere (PostgreSQL cannot store it; C strings end at it). A string a
# model caps at SINGLE_LINE_MAX characters or fewer is one line (a title, a name, a search):
# no control character at all, so none reaches a mail header or an iCalendar line. Longer
# text (descriptions, messages) may hold tabs and line breaks, no other control character.
SINGLE_LINE_MAX = 300
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode's Cc: C0, DEL, C1
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

# Numbers: integers fit an Integer column (32 bits, signed) unless the field declares its own
# bounds; decimals are finite and fit Numeric(10,2); floats are finite. Dates and times lie in
# the supported years, so that nothing computed from them (an end time, a join window, the
# day after a filter's last day) leaves what Python and the databases can hold.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
DECIMAL_MAX = Decimal("99999999.99")
DECIMAL_MIN_EXPONENT = -10
FLOAT_MAX = 1e15
YEAR_MIN, YEAR_MAX = 1900, 2200

# JSON bodies nest at most this deep (a deeper body is refused before it is parsed).
JSON_MAX_DEPTH = 32
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def text_problem(value: str, *, single_line: bool) -> str | None:
    """Why `value` is refused as text (None means fine): NUL anywhere, any control character in
    one-line text, control characters other than tab and line breaks in longer text."""
    if "\x00" in value:
        return "Text must not contain NUL characters"
    if single_line:
        if _CONTROL.search(value):
            return "This text must be one line without control characters"
    elif _CONTROL_BUT_LINES.search(value):
        return "Text must not contain control characters other than tabs and line breaks"
    return None


def number_problem(value, *, bounded: bool) -> str | None:
    """Why a parsed number is refused (None means fine). `bounded`: the field declares its
    own maximum, which then applies instead of the column's."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if not bounded and not INT_MIN <= value <= INT_MAX:
            return f"Must be between {INT_MIN} and {INT_MAX}"
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > FLOAT_MAX:
            return f"Must be a finite number of at most {FLOAT_MAX:g}"
    elif isinstance(value, Decimal):
        if not value.is_finite():
            return "Must be a finite number"
        if value and value.as_tuple().exponent < DECIMAL_MIN_EXPONENT:
            return f"Must have at most {-DECIMAL_MIN_EXPONENT} decimal places"
        if not bounded and abs(value) > DECIMAL_MAX:
            return f"Must be between -{DECIMAL_MAX} and {DECIMAL_MAX}"
    return None


def date_problem(value: date) -> str | None:
    """Why a date or time is refused (None means fine): outside YEAR_MIN..YEAR_MAX."""
    if not YEAR_MIN <= value.year <= YEAR_MAX:
        return f"Dates must lie in the years {YEAR_MIN} to {YEAR_MAX}"
    return None


def json_too_deep(text: str, limit: int = JSON_MAX_DEPTH) -> bool:
    """True when the JSON text nests arrays/objects deeper than `limit`; counted without
    parsing or recursion (string contents are skipped), so any input is safe to ask about."""
    depth = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class JsonTooDeep(ValueError):
    """A JSON body nested deeper than JSON_MAX_DEPTH."""


def read_json_body(raw: bytes):
    """(document, text) of a request body that claims to be JSON, read by the rules every such
    body keeps to: UTF-8 (UnicodeDecodeError), nested at most JSON_MAX_DEPTH, checked before
    parsing (JsonTooDeep), valid JSON (ValueError, RecursionError). NUL is the caller's to
    look for in `text` (`json_has_nul`)."""
    text = raw.decode("utf-8")
    if json_too_deep(text):
        raise JsonTooDeep(f"Request body nests deeper than {JSON_MAX_DEPTH} levels")
    return json.loads(text), text


# NUL in JSON text can only be the escape \u0000 (a raw control character is malformed JSON);
# an escaped backslash before "u0000" is text, not NUL.
_JSON_NUL = re.compile(r"(?:^|[^\\])(?:\\\\)*\\u0000", re.IGNORECASE)


def json_has_nul(text: str) -> bool:
    """True when a string (or key) anywhere in the JSON text holds NUL."""
    return "\\u0000" in text.lower() and _JSON_NUL.search(text) is not None


def nul_paths(document) -> dict[str, str]:
    """Where a parsed JSON document holds NUL, in a string or a key: {"a.0.b": message}.
    Walked with a stack, not recursion."""
    found: dict[str, str] = {}
    stack = [((), document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                found[".".join(map(str, path)) or "body"] = "Text must not contain NUL characters"
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    found[".".join(map(str, (*path, key.replace("\x00", "\\u0000"))))] = \
                        "Keys must not contain NUL characters"
                stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in enumerate(value))
    return found


def one_line(value: str, by: str = " ") -> str:
    """Each control character (line breaks included) replaced `by` a single space: for text
    written into a header line (a mail subject) from values stored before these rules."""
    return _CONTROL.sub(by, value)


def cut(value: str, limit: int) -> str:
    """`value` cut to at most `limit` characters, an ellipsis marking a cut."""
    return value if len(value) <= limit else value[:limit - 1].rstrip() + "\u2026"


# --- e-mail and phone -------------------------------------------------------------------------

def normalise_email(email: str) -> str:
    """Lower-cased and syntax-checked (no DNS look-up); ValueError says what is wrong."""
    try:
        result = validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return result.normalized.lower()


def normalise_phone(phone: str) -> str:
    """E.164 (+14155550123). The number must carry its country code."""
    raw = phone.strip()
    if not raw.startswith("+"):
        raise ValueError("Phone numbers must be in international format, starting with + and "
                         "the country code (e.g. +14155550123)")
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        raise ValueError("This is not a valid phone number") from None
    if not phonenumbers.is_possible_number(parsed) or not phonenumbers.is_valid_number(parsed):
        raise ValueError("This is not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


# --- passwords --------------------------------------------------------------------------------

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 128  # hashing cost is per byte; unbounded input is a denial of service


def password_problems(password: str, email: str | None = None) -> list[str]:
    """What is wrong with a password, in words a user can act on; [] when it is acceptable."""
    problems = []
    if len(password) < PASSWORD_MIN_LENGTH:
        problems.append(f"must be at least {PASSWORD_MIN_LENGTH} characters long")
    if len(password) > PASSWORD_MAX_LENGTH:
        problems.append(f"must be at most {PASSWORD_MAX_LENGTH} characters long")
    if not any(ch.isalpha() for ch in password):
        problems.append("must contain a letter")
    if not any(ch.isdigit() for ch in password):
        problems.append("must contain a digit")
    if email:
        lowered = password.lower()
        local = email.lower().split("@", 1)[0]
        if lowered == email.lower() or (len(local) >= 4 and lowered == local):
            problems.append("must not be your e-mail address")
    return problems


# --- free text: the tripwire ------------------------------------------------------------------

_SQLI_PATTERNS = [
    r"\bunion\b\s+(?:all\s+)?\bselect\b",
    r"'\s*(?:or|and)\s+(?:'[^']*'|\d+)\s*(?:=|<|>|like\b)\s*(?:'[^']*|\d+)",
    r"'\s*(?:or|and)\s+'?\w+'?\s*=\s*'?\w*'?\s*(?:--|#|/\*)",
    r";\s*(?:drop|truncate|alter)\s+(?:table|database|schema|index|view|user)\b",
    r";\s*(?:delete\s+from|insert\s+into|update\s+\w+\s+set|create\s+(?:table|user|database)"
    r"|exec(?:ute)?\s|shutdown\b)",
    r"\w'\s*(?:;|\))?\s*(?:--|#)\s*$",
    r"'\s*;\s*--",
    r"\b(?:sleep|pg_sleep|benchmark|waitfor\s+delay)\s*\(",
    r"\bxp_cmdshell\b",
    r"\binformation_schema\b",
]
_XSS_PATTERNS = [
    r"<\s*/?\s*(?:script|iframe|object|embed|applet|meta|link|style|base|form|svg|math)\b",
    r"<[^>]*\bon[a-z]+\s*=",
    r"\bjavascript\s*:",
    r"\bvbscript\s*:",
    r"\bdata\s*:\s*text/html",
    r"\bsrcdoc\s*=",
]
_SQLI = re.compile("|".join(_SQLI_PATTERNS), re.IGNORECASE)
_XSS = re.compile("|".join(_XSS_PATTERNS), re.IGNORECASE)


def detect_sql_injection(text: str) -> bool:
    return bool(_SQLI.search(text))


def detect_xss(text: str) -> bool:
    return bool(_XSS.search(unicodedata.normalize("NFKC", text)))


def _check_safe_text(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("unsafe_input", "Text must not contain null bytes")
    if detect_sql_injection(value) or detect_xss(value):
        raise PydanticCustomError(
            "unsafe_input", "This text looks like an injection attempt and was not accepted")
    return value


def _check_name(value: str) -> str:
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise PydanticCustomError("invalid_name", "Names must not contain control characters")
    if not any(ch.isalpha() for ch in value):
        raise PydanticCustomError("invalid_name", "A name must contain a letter")
    return _check_safe_text(value)


def _check_email(value: str) -> str:
    try:
        return normalise_email(value)
    except ValueError as exc:
        raise PydanticCustomError("invalid_email", str(exc)) from None


def _check_phone(value: str) -> str:
    try:
        return normalise_phone(value)
    except ValueError as exc:
        raise PydanticCustomError("invalid_phone", str(exc)) from None


def _check_url(value: str) -> str:
    # A URL is one line whatever its length: it reaches calendar lines and mail bodies.
    if text_problem(value, single_line=True):
        raise PydanticCustomError("invalid_url", "A URL must not contain control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PydanticCustomError("invalid_url", "Must be an http(s) URL")
    return value


def _check_password(value: str) -> str:
    problems = password_problems(value)
    if problems:
        raise PydanticCustomError("weak_password", "Password " + "; ".join(problems))
    return value


# Annotated types for pydantic models: validation and documentation in one place.
Email = Annotated[str, Field(max_length=254), AfterValidator(_check_email)]
Phone = Annotated[str, Field(max_length=32), AfterValidator(_check_phone)]
PersonName = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_check_name)]
SafeText = Annotated[str, AfterValidator(_check_safe_text)]
Url = Annotated[str, Field(max_length=500), AfterValidator(_check_url)]
NewPassword = Annotated[str, Field(min_length=1, max_length=PASSWORD_MAX_LENGTH),
                        AfterValidator(_check_password)]
