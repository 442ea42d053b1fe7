"""``python -m hounsfield.cli``: the ``hounsfield`` command (how ``hounsfield up`` starts its services)."""

from hounsfield.cli import main

main()
