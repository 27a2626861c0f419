"""``python -m dbchaos``: the same as the ``dbchaos`` command."""

from dbchaos.cli.main import main

main()
