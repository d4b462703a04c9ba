"""``python -m daemon.cli``."""

from daemon.cli import main

if __name__ == "__main__":
    main()
