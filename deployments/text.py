"""How a long text is cut to fit a list or a table, everywhere: the admin's lists and the commands' tables.

Never inside a word: a task id, a model id, a path or a URL in the text is shown whole or not at all, so
that what is shown can be looked up.
"""

from __future__ import annotations

ELLIPSIS = "…"


def cut_between_words(text: str, width: int) -> str:
    """``text`` cut to about ``width`` characters, ending with an ellipsis; the word the cut falls in is kept
    (so the result may be longer than ``width``), and a text of one word is never cut."""
    if len(text) <= width:
        return text
    end = width - 1
    if text[end - 1] != " " and text[end] != " ":
        end = text.find(" ", end)
        if end == -1:
            return text
    return f"{text[:end].rstrip()}{ELLIPSIS}"
