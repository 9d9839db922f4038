"""`python scripts/train.py ...`: the program `clara-train` runs, clara.train.cli (see its --help)."""
from clara.train.cli import main, run

if __name__ == "__main__":
    run()
