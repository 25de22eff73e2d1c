"""atheris target: the httptools parser backend (see README.md)."""

from http11_parser import main

if __name__ == "__main__":
    main("httptools")
