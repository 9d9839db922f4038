"""`python scripts/predict.py ...`: the program `clara-predict` runs, clara.cli.predict (see its --help)."""
from clara.cli.predict import main, run

if __name__ == "__main__":
    run()
