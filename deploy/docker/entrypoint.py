"""Container entrypoint: put the application on the command line, then exec asgiserve.

``asgiserve`` takes the application as its first positional argument
(``module:attr``). The container command decides what runs:

* empty, or starting with an option (``docker run IMAGE --log-level debug``):
  ``asgiserve $APP <options>``: ``docker run -e APP=myapp:app IMAGE`` works
  (so does asgiserve's own ``ASGISERVE_APP``); without either, the built-in
  demo ``app:app`` (``/app/app.py``) runs;
* starting with an import string, i.e. a word containing ``:``
  (``docker run IMAGE myapp:app --log-level debug``, or ``CMD ["myapp:app"]``
  in a derived Dockerfile): ``asgiserve <command>``;
* anything else is a program, run as given (``docker run -it IMAGE python``,
  ``docker run IMAGE asgiserve --version``, ``docker run -it IMAGE bash``).

Options pass through untouched; the image sets ``ASGISERVE_HOST``
and ``ASGISERVE_PORT`` so the server listens on 0.0.0.0:8000 unless told
otherwise.

``os.execvp`` replaces this process with the server, so the server keeps PID 1
(or whatever PID the runtime gave us) and receives SIGTERM directly: no shell,
no wrapper process that could swallow or delay the signal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

DEFAULT_APP = "app:app"


def build_argv(args: list[str], environ: Mapping[str, str]) -> list[str]:
    """Return the full asgiserve command line for the container arguments ``args``."""
    if not args or args[0].startswith("-"):
        app = environ.get("APP") or environ.get("ASGISERVE_APP") or DEFAULT_APP
        return ["asgiserve", app, *args]
    if ":" in args[0]:
        return ["asgiserve", *args]
    return args


def main() -> None:
    argv = build_argv(sys.argv[1:], os.environ)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - exec without a shell is the point


if __name__ == "__main__":
    main()
