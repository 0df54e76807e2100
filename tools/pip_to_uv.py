"""Print uv's arguments for what this machine's pip is configured to use (`make install` passes them to `uv pip install`).

uv reads none of pip's configuration, so without these a machine whose pip takes torch from a local wheel folder, an
extra index or a constraint file would get other files from uv. Reads `pip config list` (files and PIP_* variables);
prints one line of arguments, shell-quoted. Stdlib only: it runs before anything is installed.
"""
import shlex, subprocess, sys

FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint", "no-index": "--no-index"}  # pip option -> uv option
MULTI = {"extra-index-url", "find-links", "constraint"}  # options whose value is a whitespace-separated list


def settings(listing: str) -> dict[str, str]:
    "pip's effective settings from `pip config list` lines (`scope.option='value'`), in pip's order of precedence."
    rank = {"global": 0, "user": 1, "site": 2, ":env:": 3}  # later overrides earlier: PIP_* variables override files
    rows = []
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        scope, _, opt = key.partition(".")
        if sep and opt:
            rows.append((rank.get(scope, 0), opt, value.strip().strip("'\"")))
    return {opt: value for _, opt, value in sorted(rows, key=lambda r: r[0])}


def uv_args(conf: dict[str, str]) -> list[str]:
    "uv's arguments for pip's settings: indexes, wheel folders and constraints, and pip's choice among indexes."
    args = ["--index-strategy", "unsafe-best-match"]  # pip takes the best version from any index; uv, the first index's
    for opt, flag in FLAGS.items():
        value = conf.get(opt)
        if not value:
            continue
        if opt == "no-index":
            args += [flag] if value.lower() in ("1", "true", "yes", "on") else []
        else:
            args += [a for v in (value.split() if opt in MULTI else [value]) for a in (flag, v)]
    return args


if __name__ == "__main__":
    pip = sys.argv[1] if len(sys.argv) > 1 else "pip"
    listing = subprocess.run([pip, "config", "list"], capture_output=True, text=True).stdout
    print(shlex.join(uv_args(settings(listing))))
