"""Writes a benchmark's Markdown report where the README links to it, and prints it."""

import os


def write_report(lines: list[str], path: str) -> None:
    report = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as file:
        file.write(report)
    print(report)
