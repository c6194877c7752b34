"""``python -m cli``: the ``tinymlops`` command without the console script (e.g. a source checkout)."""

from cli import main

main()
