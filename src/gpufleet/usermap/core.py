"""Validation of user mappings and their CSV form (``user,person,group,email``)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass

# A Unix user name as agents report it (POSIX portable names, plus what LDAP/AD setups use).
UNIX_USER = r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}\$?$"
_UNIX_USER_RE = re.compile(UNIX_USER)
MAX_LABEL = 128
MAX_IMPORT = 100_000
CSV_COLUMNS = ("user", "person", "group", "email")
# name@domain: no spaces, no angle brackets or commas (one address, not a list)
_EMAIL_RE = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+")
MAX_EMAIL = 254


@dataclass(frozen=True)
class Mapping:
    user: str
    person: str | None
    group: str | None
    email: str | None = None  # where notices to this user go (held-but-idle GPUs)

    def view(self) -> dict[str, str | None]:
        return {"user": self.user, "person": self.person, "group": self.group,
                "email": self.email}  # fmt: skip

    def row(self) -> tuple[str, str | None, str | None, str | None]:
        """The store's form."""
        return (self.user, self.person, self.group, self.email)


class MappingError(ValueError):
    """A mapping that cannot be stored as given; the message says what and where."""


def check_user(user: str, where: str = "user") -> str:
    if not isinstance(user, str) or not _UNIX_USER_RE.match(user):
        raise MappingError(
            f"{where}: {str(user)[:80]!r} is not a Unix user name (letters, digits, _ . @ -,"
            " at most 64 characters)"
        )
    return user


def _trimmed(value: str | None, where: str) -> str | None:
    """Text trimmed of surrounding spaces; None or empty: None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise MappingError(f"{where}: expected text, got {type(value).__name__}")
    return value.strip() or None


def check_label(value: str | None, where: str) -> str | None:
    """A person or group name: trimmed, 1 to 128 printable characters; empty means none."""
    value = _trimmed(value, where)
    if value is None:
        return None
    if len(value) > MAX_LABEL:
        raise MappingError(f"{where}: longer than {MAX_LABEL} characters")
    if any(not ch.isprintable() for ch in value):
        raise MappingError(f"{where}: contains a control character")
    return value


def check_email(value: str | None, where: str) -> str | None:
    """One e-mail address (name@domain), trimmed; empty means none."""
    value = _trimmed(value, where)
    if value is None:
        return None
    if len(value) > MAX_EMAIL or not _EMAIL_RE.fullmatch(value):
        raise MappingError(f"{where}: {value[:80]!r} is not one e-mail address (name@domain)")
    return value


def make(
    user: str, person: str | None, group: str | None, email: str | None = None, where: str = ""
) -> Mapping:
    """A checked mapping; at least one of person, group and e-mail address."""
    prefix = f"{where}: " if where else ""
    m = Mapping(
        check_user(user, f"{prefix}user"),
        check_label(person, f"{prefix}person"),
        check_label(group, f"{prefix}group"),
        check_email(email, f"{prefix}email"),
    )
    if m.person is None and m.group is None and m.email is None:
        raise MappingError(
            f"{prefix}user {user!r}: give a person, a group or an e-mail address (to forget a"
            " mapping, delete it)"
        )
    return m


def parse_csv(text: str, source: str = "CSV") -> list[Mapping]:
    """Mappings from CSV with a header naming the columns user, person, group, email (any of
    the last three may be left out or empty). Every error names its line."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if "user" not in header or not ({"person", "group", "email"} & set(header)):
        raise MappingError(
            f"{source}: the first line must name the columns user,person,group,email"
            f" (got {','.join(header) or 'nothing'})"
        )
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise MappingError(f"{source}: unknown column(s) {', '.join(unknown)}")
    reader.fieldnames = header
    out: list[Mapping] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if None in row:
            raise MappingError(f"{source} line {line}: more fields than columns")
        if not any((v or "").strip() for v in row.values()):
            continue  # a blank line
        m = make(
            (row.get("user") or "").strip(), row.get("person"), row.get("group"),
            row.get("email"), where=f"{source} line {line}",
        )  # fmt: skip
        if m.user in seen:
            raise MappingError(
                f"{source} line {line}: user {m.user!r} is already on line {seen[m.user]}"
            )
        seen[m.user] = line
        out.append(m)
        if len(out) > MAX_IMPORT:
            raise MappingError(f"{source}: more than {MAX_IMPORT} mappings")
    return out


def to_csv(mappings: Iterable[Mapping]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for m in mappings:
        w.writerow([m.user, m.person or "", m.group or "", m.email or ""])
    return buf.getvalue()


def from_store(rows: Iterable[tuple[str, str | None, str | None, str | None]]) -> list[Mapping]:
    return [Mapping(u, p, g, e) for u, p, g, e in rows]
