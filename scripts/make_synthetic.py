"""`python scripts/make_synthetic.py ...`: the program, clara.cli.make_synthetic (see its --help)."""
from clara.cli.make_synthetic import main, run

if __name__ == "__main__":
    run()
