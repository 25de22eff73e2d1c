"""The HTML page listing a folder (``StaticFiles(listing=True)``, ``asgiserve --static``).

Theory of operation
-------------------
A pure function of the folder's entries and the request: :func:`render_listing` takes what
``StaticFiles`` read from the disk (name, folder or not, size, modification time) and returns
the page. Everything a person does with it works without JavaScript:

- **Breadcrumbs.** The heading is the folder's path, each folder of it a link up to that
  folder. The links are relative (``../../``), so they stay right behind a proxy or a mount
  that adds or removes a prefix (RFC 3986 section 5.2).
- **Sorting.** ``?sort=name|size|date`` and ``&order=asc|desc``; each column heading is a link
  to the other order of its column. Folders stay above files whatever the order (file
  managers do the same). Unknown values give the default (name, ascending), never an error.
  The choice is kept in the links to other folders.
- **Any screen, light or dark.** A viewport meta, a table that wraps long names and drops the
  time of day on narrow screens, and colours from ``prefers-color-scheme``.
- **Names are escaped**: ``html.escape`` in text and attributes, ``quote`` in links, since a
  file name is chosen by whoever can write in the folder.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qsl, quote

__all__ = ["Entry", "SortKey", "human_size", "render_listing", "sort_entries", "sort_from_query"]

#: One folder entry: name, whether it is a folder, size in bytes, modification time.
Entry = tuple[str, bool, int, float]
#: How a listing is sorted: the column (name, size, date) and whether descending.
SortKey = tuple[str, bool]

DEFAULT_SORT: SortKey = ("name", False)
# The order a column gets on its first click: names A to Z, the largest and the newest first.
_FIRST_ORDER = {"name": False, "size": True, "date": True}
_COLUMNS = (("name", "Name"), ("size", "Size"), ("date", "Modified (UTC)"))

# Colours (GitHub's Primer palette, light and dark) as variables, switched by the user's
# preference (Media Queries Level 5, prefers-color-scheme). Icons are CSS masks so that they
# take the text colour of each scheme; the page needs nothing but itself.
_FOLDER_ICON = (
    "url(\"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    "%3Cpath d='M1.75 2h3.6c.5 0 .95.24 1.24.65l.7 1c.1.13.25.2.41.2h6.55c.97 0 1.75.78 "
    "1.75 1.75v7.65c0 .97-.78 1.75-1.75 1.75H1.75C.78 15 0 14.22 0 13.25V3.75C0 2.78.78 2 "
    "1.75 2Z'/%3E%3C/svg%3E\")"
)
_FILE_ICON = (
    "url(\"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    "%3Cpath d='M2 1.75C2 .78 2.78 0 3.75 0h6.59c.46 0 .9.18 1.23.51l2.92 2.92c.33.33.51.77"
    ".51 1.23v9.59c0 .97-.78 1.75-1.75 1.75h-9.5C2.78 16 2 15.22 2 14.25Zm1.75-.25a.25.25 0 "
    "0 0-.25.25v12.5c0 .14.11.25.25.25h9.5a.25.25 0 0 0 .25-.25V6h-2.75A1.75 1.75 0 0 1 9 "
    "4.25V1.5Zm6.75.06v2.69c0 .14.11.25.25.25h2.69Z'/%3E%3C/svg%3E\")"
)
_STYLE = (
    ":root{color-scheme:light dark;--bg:#fff;--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;"
    "--link:#0969da;--hover:#f6f8fa;--folder:#54aeff}"
    "@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#f0f6fc;--muted:#9198a1;"
    "--line:#3d444d;--link:#4493f8;--hover:#151b23;--folder:#4493f8}}"
    "*{box-sizing:border-box}"
    "body{margin:0;background:var(--bg);color:var(--fg);"
    'font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}'
    "main{max-width:64rem;margin:0 auto;padding:1.5rem 1rem 2rem}"
    "h1{font-size:1.3rem;font-weight:600;margin:0 0 1rem;overflow-wrap:anywhere}"
    "h1 .label{color:var(--muted);font-weight:400}h1 .sep{color:var(--muted);padding:0 .1em}"
    "a{color:var(--link);text-decoration:none}a:hover{text-decoration:underline}"
    "table{width:100%;border-collapse:collapse}"
    "th,td{padding:.45rem .6rem;text-align:left;border-bottom:1px solid var(--line)}"
    "th{font-size:.85rem;font-weight:600;color:var(--muted);white-space:nowrap}"
    "th a{color:inherit}th[aria-sort] a{color:var(--fg)}"
    ".name{overflow-wrap:anywhere}"
    ".size,.date{white-space:nowrap;font-variant-numeric:tabular-nums;color:var(--muted);"
    "width:1%}.size{text-align:right}"
    "tbody tr:hover{background:var(--hover)}"
    "td.name a::before{content:'';display:inline-block;width:1rem;height:1rem;"
    "margin-right:.5rem;vertical-align:-.15rem;background:var(--muted);"
    f"-webkit-mask:{_FILE_ICON} center/contain no-repeat;mask:{_FILE_ICON} center/contain "
    "no-repeat}"
    "tr.dir td.name a::before{background:var(--folder);"
    f"-webkit-mask-image:{_FOLDER_ICON};mask-image:{_FOLDER_ICON}}}"
    "tr.dir td.name a{font-weight:600}tr.up td.name a::before{display:none}"
    "tr.empty td{color:var(--muted);font-style:italic}"
    ".summary{color:var(--muted);font-size:.85rem;margin-top:1rem}"
    "@media (max-width:36rem){main{padding:1rem .5rem}th,td{padding:.5rem .3rem}"
    ".date .time{display:none}}"
)


def sort_from_query(query_string: bytes) -> SortKey:
    """``?sort=name|size|date&order=asc|desc``; anything else gives the default."""
    column, order = DEFAULT_SORT[0], ""
    for key, value in parse_qsl(query_string.decode("latin-1")):
        if key == "sort" and value in _FIRST_ORDER:
            column = value
        elif key == "order" and value in ("asc", "desc"):
            order = value
    return column, (order == "desc") if order else _FIRST_ORDER[column]


def sort_entries(entries: Iterable[Entry], sort: SortKey) -> list[Entry]:
    """Folders first, then files, each group in the order asked (ties by name)."""
    column, descending = sort
    folders: list[Entry] = []
    files: list[Entry] = []
    for entry in entries:
        (folders if entry[1] else files).append(entry)

    def by_name(entry: Entry) -> tuple[str, str]:
        return entry[0].casefold(), entry[0]

    def by_size(entry: Entry) -> tuple[int, str, str]:
        return entry[2], *by_name(entry)

    def by_date(entry: Entry) -> tuple[float, str, str]:
        return entry[3], *by_name(entry)

    key = by_size if column == "size" else by_date if column == "date" else by_name
    # A folder's own size says nothing about its contents: folders go by name then.
    folder_key = by_name if column == "size" else key
    return sorted(folders, key=folder_key, reverse=descending) + sorted(
        files, key=key, reverse=descending
    )


def render_listing(
    entries: Iterable[Entry], *, base: str, segments: Sequence[str], sort: SortKey
) -> bytes:
    """The page listing a folder: ``base`` is the path the app is mounted at (``root_path``,
    shown but not linked), ``segments`` the folders below it down to this one."""
    ordered = sort_entries(entries, sort)
    suffix = _sort_query(sort)
    depth = len(segments)
    title = (base.rstrip("/") + "/" + "".join(s + "/" for s in segments)) or "/"
    rows = []
    if depth:
        rows.append(
            f'<tr class="up"><td class="name">{_link("../" + suffix, "../")}</td>'
            '<td class="size"></td><td class="date"></td></tr>'
        )
    total = 0
    for name, is_dir, size, mtime in ordered:
        shown = html.escape(name + "/" if is_dir else name)
        href = html.escape(quote(name) + ("/" + suffix if is_dir else ""))
        when = _date_cell(mtime)
        if is_dir:
            size_cell = "&#8212;"
        else:
            total += size
            size_cell = f'<span title="{size:,} bytes">{human_size(size)}</span>'
        rows.append(
            f'<tr class="{"dir" if is_dir else "file"}"><td class="name"><a href="{href}">'
            f'{shown}</a></td><td class="size">{size_cell}</td><td class="date">{when}</td></tr>'
        )
    if not ordered:
        rows.append(
            '<tr class="empty"><td class="name" colspan="3">This folder is empty.</td></tr>'
        )
    folders = sum(1 for entry in ordered if entry[1])
    files = len(ordered) - folders
    summary = f"{folders} folder{'s' * (folders != 1)}, {files} file{'s' * (files != 1)}" + (
        f" ({human_size(total)})" if files else ""
    )
    escaped_title = html.escape(title)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>Index of {escaped_title}</title><style>{_STYLE}</style></head><body><main>"
        f'<h1><span class="label">Index of </span>{_breadcrumbs(base, segments, suffix)}</h1>'
        f"<table><thead><tr>{_headings(sort)}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f'<p class="summary">{summary}</p></main></body></html>\n'
    ).encode()


def _date_cell(mtime: float) -> str:
    try:
        stamp = time.gmtime(mtime)
    except (OverflowError, OSError, ValueError):
        return "&#8212;"  # a time no calendar holds (set on purpose): not worth a 500
    return (
        f'<time datetime="{time.strftime("%Y-%m-%dT%H:%MZ", stamp)}">'
        f"{time.strftime('%Y-%m-%d', stamp)}"
        f'<span class="time"> {time.strftime("%H:%M", stamp)}</span></time>'
    )


def _breadcrumbs(base: str, segments: Sequence[str], suffix: str) -> str:
    """The heading's path, each folder of it a relative link up to it; the current folder
    is not a link. ``base`` (the mount point) is text: it may not be ours to list."""
    depth = len(segments)
    home = html.escape(base.rstrip("/") + "/")
    crumbs = [_link("../" * depth + suffix, home) if depth else _current(home)]
    for i, segment in enumerate(segments):
        name = html.escape(segment)
        up = depth - 1 - i
        crumbs.append(_link("../" * up + suffix, name) if up else _current(name))
        crumbs.append('<span class="sep">/</span>')
    return "".join(crumbs)


def _link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href)}">{text}</a>'


def _current(text: str) -> str:
    return f'<span aria-current="page">{text}</span>'


def _headings(sort: SortKey) -> str:
    column, descending = sort
    cells = []
    for name, label in _COLUMNS:
        if name == column:
            order = "asc" if descending else "desc"  # the link turns the order round
            arrow = " &#9660;" if descending else " &#9650;"
            state = f' aria-sort="{"descending" if descending else "ascending"}"'
        else:
            order = "desc" if _FIRST_ORDER[name] else "asc"
            arrow = state = ""
        cells.append(
            f'<th class="{name}"{state}><a href="?sort={name}&amp;order={order}">'
            f"{label}{arrow}</a></th>"
        )
    return "".join(cells)


def _sort_query(sort: SortKey) -> str:
    """The query that keeps a non-default sort in links to other folders (not escaped)."""
    if sort == DEFAULT_SORT:
        return ""
    column, descending = sort
    return f"?sort={column}&order={'desc' if descending else 'asc'}"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns
