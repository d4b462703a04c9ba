"""Download banking77 (PolyAI/banking77 on the Hugging Face hub; CC BY 4.0, Casanueva et
al. 2020) as the CSV directory the project reads (train.csv, test.csv, categories.json).

    pip install 'cleaninbox[hub]' && python scripts/fetch_banking77.py data/banking77

Used by the GitHub workflows; needs internet (the hub), unlike everything else here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from training.config import DataConfig
from training.data import download_from_hub


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} DIRECTORY")
    target = Path(sys.argv[1])
    download_from_hub(DataConfig(dir=target, source="hub"))
    print(f"banking77 written to {target}")


if __name__ == "__main__":
    main()
