#!/usr/bin/env bash
# readme_config.sh: the README's table of config keys is the code's table
# (config/config.c, as `comrope-serve --help` prints it): the same keys in
# the same order, with the same defaults, ranges and meanings.
set -euo pipefail
SERVE=$1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || PY=python3
# shellcheck disable=SC2016  # the Python program's backquotes are Markdown
"$SERVE" --help | "$PY" -c '
import re, sys
help_lines = sys.stdin.read().split("\n")
want = []
for i, line in enumerate(help_lines):
    m = re.match(r"  --(\S+)\s+(.*)$", line)
    if m:
        d = re.match(r"\s*default (\"[^\"]*\")(, range \[[^\]]*\])?, env", help_lines[i + 1])
        want.append("| `%s` | %s%s | %s |" % (m.group(1), d.group(1), d.group(2) or "", m.group(2)))
readme = open(sys.argv[1]).read()
head = "| key | default | meaning |\n|---|---|---|\n"
if head not in readme:
    sys.exit("FAIL: no config table in README.md")
have = readme.split(head, 1)[1].split("\n\n", 1)[0].split("\n")
if have != want:
    for w in want:
        if w not in have:
            print("README lacks or differs: " + w)
    for h in have:
        if h not in want:
            print("README has, the code not: " + h)
    sys.exit("FAIL: README.md config table != comrope-serve --help (regenerate the rows from --help)")
print("ok: README.md lists the %d config keys as the code does" % len(want))
' "$ROOT/README.md"
