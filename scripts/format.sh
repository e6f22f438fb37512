#!/usr/bin/env bash
# The C sources in the style of .clang-format (clang-format 14).
#
#   scripts/format.sh            reformat every file in place
#   scripts/format.sh --check    change nothing; list the files that differ, exit 1 if any
#
# The files: every tracked *.c / *.h under engine/ server/ proto/ config/
# app/ bench/ tests/ tools/ (no third-party or generated C lives there).
# SortIncludes is off in .clang-format: include order can carry meaning.
set -euo pipefail
cd "$(dirname "$0")/.."

cf=$(command -v clang-format-14 || command -v clang-format || true)
if [ -z "$cf" ]; then
    echo "format.sh: clang-format is missing (apt-get install clang-format; scripts/install-deps.sh build)" >&2
    exit 2
fi

# Tracked files in a clone; in a copy of the tree without git (the fresh
# Debian 12 container of tests/deploy, which installs no git) the same
# folders' files, rather than silently none.
dirs=(engine server proto config app bench tests tools)
if command -v git >/dev/null && git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files -- "${dirs[@]/%//*.[ch]}")
else
    mapfile -t files < <(find "${dirs[@]}" -name '*.[ch]' -not -path '*/node_modules/*' 2>/dev/null | sort)
fi
if [ ${#files[@]} -eq 0 ]; then
    echo "format.sh: no C files found under ${dirs[*]}" >&2
    exit 2
fi

if [ "${1:-}" = --check ]; then
    bad=0
    for f in "${files[@]}"; do
        if ! "$cf" --style=file "$f" | cmp -s - "$f"; then
            echo "$f"
            bad=1
        fi
    done
    if [ $bad = 1 ]; then
        echo "format.sh: the files above differ from .clang-format's style: run scripts/format.sh" >&2
    fi
    exit $bad
fi
"$cf" --style=file -i "${files[@]}"
echo "format.sh: ${#files[@]} files formatted"
