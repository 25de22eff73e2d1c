"""atheris target: the pure-Python (h11) parser backend (see README.md)."""

from http11_parser import main

if __name__ == "__main__":
    main("h11")
