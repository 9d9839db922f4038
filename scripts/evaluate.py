"""`python scripts/evaluate.py ...`: the program `clara-evaluate` runs, clara.cli.evaluate (see its --help)."""
from clara.cli.evaluate import main, run

if __name__ == "__main__":
    run()
