"""Which SQL :func:`arrowflow.query_state` runs: one SELECT over the checkpoint's tables.

polars SQL has table functions (``read_csv``, ``read_parquet``, ``read_ipc``, ``read_json``,
``read_ndjson``…) that read any file the process can read, and statements besides SELECT
(``CREATE TABLE``, ``SHOW TABLES``, ``EXPLAIN``…). polars has no switch to turn them off, and
a lazy SQL frame is only parsed when it is collected, so the query is checked before polars
sees it:

1. It is split into tokens by rules stricter than polars' own tokenizer wherever the two
   could disagree about where a literal or a name ends: comments, dollar quotes, prefixed
   literals (``E'…'``, ``X'…'``, ``U&"…"``), backslashes, ``#``, ``@`` and non-ASCII
   characters outside literals are refused outright, and so is a number run into a name or
   a quote (polars reads ``1from t`` as ``1 FROM t`` and ``1e'…'`` as ``1 E'…'``). Inside ``'…'`` and ``"…"`` a doubled
   quote is the only escape, as in polars.
2. The statement starts with ``SELECT`` or ``WITH`` (or a parenthesis), and there is one.
3. No name, quoted or not, is called as a function when it reads files (``read_*``,
   ``scan_*``), and nothing after ``FROM`` or ``JOIN`` is a function call at all.
4. Every table named after ``FROM`` or ``JOIN`` is a table of the checkpoint or a name the
   query defines with ``WITH name AS (…)``.
"""

from __future__ import annotations

import re
from typing import NoReturn

from arrowflow.errors import CheckpointError

_WORD_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_WORD = _WORD_START | frozenset("0123456789")
#: A number as polars' tokenizer reads one: hexadecimal, or digits, a fraction, an exponent.
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?")
_SPACE = frozenset(" \t\r\n")
_PUNCT = frozenset("()*,.+-/%<>=!|&^~:;[]{}")
_QUOTES = "'\"`"
_FILE_READERS = ("read_", "scan_")
_TABLE_POSITION = frozenset({"from", "join"})
#: Keywords that end a FROM clause's list of tables.
_CLAUSES = frozenset(
    {
        "where",
        "group",
        "having",
        "order",
        "limit",
        "offset",
        "union",
        "except",
        "intersect",
        "on",
        "using",
        "window",
        "qualify",
        "fetch",
    }
)


def _refuse(reason: str) -> NoReturn:
    msg = f"state query refused: {reason}; a state query is one SELECT over the checkpoint's tables"
    raise CheckpointError(msg)


def _tokens(sql: str) -> list[tuple[str, str]]:
    """(kind, text) pairs: ``word`` (lower-cased), ``name`` (a quoted identifier), ``string``,
    ``number`` or ``punct``."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in _SPACE:
            i += 1
        elif ch in _QUOTES:
            end = i + 1
            while True:
                end = sql.find(ch, end)
                if end < 0:
                    _refuse(f"an unterminated {ch}…{ch} at character {i}")
                if end + 1 < n and sql[end + 1] == ch:  # a doubled quote stands for one
                    end += 2
                    continue
                break
            text = sql[i + 1 : end].replace(ch * 2, ch)
            tokens.append(("string" if ch == "'" else "name", text))
            i = end + 1
        elif ch in _WORD_START:
            end = i
            while end < n and sql[end] in _WORD:
                end += 1
            if end < n and sql[end] in _QUOTES:
                _refuse(f"a prefixed literal {sql[i : end + 1]}… at character {i}")
            tokens.append(("word", sql[i:end].lower()))
            i = end
        elif ch.isascii() and ch.isdigit():
            match = _NUMBER.match(sql, i)
            end = match.end() if match else i + 1
            if end < n and (sql[end] in _WORD or sql[end] in _QUOTES):
                # polars ends the number here and reads a name (1from t: FROM t) or a
                # literal (1e'…': an escaped string) right after it
                _refuse(
                    f"a number run into a name or a literal at character {i} ({sql[i : end + 1]}…)"
                )
            tokens.append(("number", sql[i:end]))
            i = end
        elif sql.startswith(("--", "/*"), i):
            _refuse(f"a comment at character {i}")
        elif ch == "&" and i + 1 < n and sql[i + 1] in _QUOTES:
            _refuse(f"an escaped identifier at character {i}")
        elif ch in _PUNCT:
            tokens.append(("punct", ch))
            i += 1
        else:
            _refuse(f"the character {ch!r} at character {i} outside a quoted literal")
    return tokens


def check_state_query(sql: str, tables: list[str]) -> None:
    """Raise a CheckpointError unless ``sql`` is one SELECT that reads only ``tables``."""
    if not isinstance(sql, str):
        msg = f"a state query is SQL text, got {type(sql).__name__}"
        raise CheckpointError(msg)
    tokens = _tokens(sql)
    while tokens and tokens[-1] == ("punct", ";"):
        tokens.pop()
    if not tokens or tokens[0] not in (("word", "select"), ("word", "with"), ("punct", "(")):
        first = tokens[0][1].upper() if tokens else "nothing"
        _refuse(f"it starts with {first}")
    if ("punct", ";") in tokens:
        _refuse("it holds several statements")
    defined = {
        tokens[i][1].lower()
        for i in range(len(tokens) - 2)
        if tokens[i][0] in ("word", "name")
        and tokens[i + 1] == ("word", "as")
        and tokens[i + 2] == ("punct", "(")
    }
    known = {table.lower() for table in tables} | defined
    # Per parenthesis: is it a query (its first token SELECT or WITH), and is it inside its
    # FROM clause, where each comma starts another table? FROM is also a keyword of
    # EXTRACT(… FROM …), SUBSTRING, TRIM and IS DISTINCT FROM, which are no queries.
    scopes = [[True, False]]
    for i, (kind, text) in enumerate(tokens):
        following_kind, following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        called = (following_kind, following) == ("punct", "(")
        if kind in ("word", "name") and called and text.lower().startswith(_FILE_READERS):
            _refuse(f"{text}() reads files")
        scope = scopes[-1]
        if (kind, text) == ("punct", "("):
            scopes.append(
                [(following_kind, following) in (("word", "select"), ("word", "with")), False]
            )
        elif (kind, text) == ("punct", ")"):
            if len(scopes) > 1:
                scopes.pop()
        elif kind == "word" and text in _CLAUSES:
            scope[1] = False
        elif scope[0] and (
            (kind == "word" and text in _TABLE_POSITION and tokens[i - 1] != ("word", "distinct"))
            or (scope[1] and (kind, text) == ("punct", ","))
        ):
            scope[1] = True
            _check_table(tokens, i, known, tables)


def _check_table(tokens: list[tuple[str, str]], i: int, known: set[str], tables: list[str]) -> None:
    """The table reference after token ``i`` (FROM, JOIN or a comma of a FROM clause)."""
    where = tokens[i][1].upper() if tokens[i][0] == "word" else "a comma of FROM"
    if i + 1 >= len(tokens):
        _refuse(f"no table after {where}")
    kind, name = tokens[i + 1]
    if (kind, name) == ("punct", "("):
        return  # a subquery, checked as its own scope
    if i + 2 < len(tokens) and tokens[i + 2] == ("punct", "("):
        reads = " that reads files" if name.lower().startswith(_FILE_READERS) else ""
        _refuse(f"{name}() after {where} is a table function{reads}")
    if kind not in ("word", "name") or name.lower() not in known:
        _refuse(
            f"{name!r} after {where} is not a table of this checkpoint "
            f"(tables: {', '.join(repr(t) for t in sorted(tables)) or 'none'})"
        )
