"""Every message has both languages: the messages marked in the templates, the pages'
scripts, the Python code and the CLI's help are each in the zh-CN catalogue, with the same
``{placeholders}``, and the catalogue holds nothing the code no longer says."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from gpufleet import i18n
from tests.i18n import clitext, extract

CAT = i18n.sections(i18n.CHINESE)
ALL = i18n.catalogue(i18n.CHINESE)
CLICK_SRC = "\n".join(p.read_text() for p in Path(click.__file__).parent.glob("*.py"))
HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def found() -> dict[str, set[str]]:
    return {**extract.messages(), "help": clitext.help_texts()}


def test_the_extractors_find_what_the_code_marks(found):
    # a test that finds nothing would pass for nothing
    assert {"Overview", "Where should my job run?", "holds memory, under the idle threshold "
            "for {minutes} min"} <= found["other"]  # fmt: skip
    assert {"connecting…", "{n} free", "GPU-hours held per {period}, stacked by {by}",
            "job state\x04held"} <= found["js"]  # fmt: skip
    assert {"error: {message}", "free GPUs", "gpufleet {what}: GPU usage by {by}, {label} "
            "({first} to {last})"} <= found["other"]  # fmt: skip
    assert (
        "Every column in the table (default: the ones that fit the terminal, by priority)."
        in (found["help"])
    )
    assert len(found["js"]) > 100 and len(found["other"]) > 250 and len(found["help"]) > 150


def test_every_message_has_its_chinese(found):
    missing = sorted((found["other"] | found["help"]) - set(ALL))
    assert not missing, f"not in src/gpufleet/i18n/zh-CN.json: {missing}"
    # the scripts' messages must be in the section shipped to the pages
    missing_js = sorted(found["js"] - set(CAT["js"]))
    assert not missing_js, f"not in the 'js' section of zh-CN.json: {missing_js}"


def test_no_catalogue_entry_is_unused(found):
    used = found["other"] | found["js"] | found["help"]
    unused = sorted(k for s, part in CAT.items() if s != "click" for k in part if k not in used)
    assert not unused, f"in zh-CN.json but not in the code any more: {unused}"
    # click's own messages: each is a message click's source still has
    gone = [k for k in CAT["click"] if f'"{k}"' not in CLICK_SRC]
    assert not gone, f"click no longer says: {gone}"


def test_placeholders_match_and_every_entry_is_translated():
    for section, part in CAT.items():
        for en, zh in part.items():
            assert i18n.placeholders(en) == i18n.placeholders(zh), (section, en, zh)
            assert zh.strip(), (section, en)
            # Chinese characters, or an entry that is the same in both (names, units), or one
            # with no words outside its placeholders ("{weekday} {part}": "{weekday}{part}")
            words = re.sub(r"\{[^}]*\}", "", en)
            assert HAN.search(zh) or zh == en or not re.search(r"[a-z]{3}", words), (en, zh)


def test_a_message_is_in_one_section_only():
    seen: dict[str, str] = {}
    for section, part in CAT.items():
        for k in part:
            assert k not in seen, f"{k!r} in both {seen[k]} and {section}"
            seen[k] = section


@pytest.mark.parametrize(
    ("header", "want"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("zh-Hans", "zh-CN"),
        ("zh-TW", "zh-CN"),  # Traditional readers: Simplified over English (docs/i18n.md)
        ("fr, de;q=0.8", None),
        ("*", None),
        ("en;q=0.3, zh;q=0.31", "zh-CN"),
        ("zh;q=0, en;q=0.1", "en"),
        ("zh;q=abc, en;q=0.1", "en"),  # a q the client got wrong counts as 0
        ("", None),
        (None, None),
    ],
)
def test_accept_language(header, want):
    assert i18n.negotiate(header) == want


def test_locale_and_cli_language():
    assert i18n.from_locale({"LANG": "zh_CN.UTF-8"}) == "zh-CN"
    assert i18n.from_locale({"LC_ALL": "C", "LANG": "zh_CN.UTF-8"}) is None  # LC_ALL wins
    assert i18n.from_locale({"LC_MESSAGES": "en_GB.UTF-8", "LANG": "zh_CN"}) == "en"
    assert i18n.cli_language({"GPUFLEET_LANG": "zh", "LANG": "en_US"}, "en") == "zh-CN"
    assert i18n.cli_language({"LANG": "en_US.UTF-8"}, "zh-CN") == "zh-CN"
    assert i18n.cli_language({"LANG": "zh_CN.UTF-8"}) == "zh-CN"
    assert i18n.cli_language({}) == "en"


def test_translate_plural_and_width():
    assert i18n.translate("{n} free", "zh-CN", n=3) == "3 块空闲"
    assert i18n.translate("{n} free", "en", n=3) == "3 free"
    assert i18n.translate("not a message", "zh-CN") == "not a message"
    one = "{n} hour of late samples waits for the next rollup: its periods will still change"
    other = "{n} hours of late samples wait for the next rollup: their periods will still change"
    assert i18n.plural(one, other, 1, "en").startswith("1 hour of")
    assert i18n.plural(one, other, 3, "en").startswith("3 hours of")
    assert i18n.plural(one, other, 3, "zh-CN").startswith("有 3 小时")
    assert i18n.width("GPU 利用率") == 10 and i18n.width("abc") == 3
    # one English word, two senses
    assert i18n.translate("held", "zh-CN") == "被占用"
    assert i18n.pgettext("job state", "held", "zh-CN") == "挂起"
    assert i18n.pgettext("job state", "held", "en") == "held"
    with pytest.raises(ValueError, match="fr"):
        i18n.catalogue("fr")


def test_wrapping_by_display_width():
    from gpufleet.i18n.clickhelp import wrap_wide

    text = "通过电子邮件发送报表（HTML 含图表，附 CSV；使用邮件设置中的 SMTP 服务器），而不是打印。"
    for columns in (12, 20, 33):
        lines = wrap_wide(text, columns, "  ", "  ")
        assert all(i18n.width(line) <= columns for line in lines), lines
        assert not any(line.strip()[0] in "，。；）" for line in lines), lines  # no line starts so
        assert "".join(x.strip() for x in lines).replace(" ", "") == text.replace(" ", "")
    assert wrap_wide("plain english words here", 12) == ["plain", "english", "words here"]
