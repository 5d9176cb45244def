"""``python -m geode`` is the ``geode`` command."""

from geode.cli import main

main()
