"""``python -m advkit.cli``: the same as the ``advkit`` console script."""

from advkit.cli import main

if __name__ == "__main__":
    main()
