"""`python scripts/explain.py ...`: the program `clara-explain` runs, clara.cli.explain (see its --help)."""
from clara.cli.explain import main, run

if __name__ == "__main__":
    run()
