"""`python scripts/data_summary.py ...`: the program `clara-data-summary` runs, clara.cli.data_summary (see its --help)."""
from clara.cli.data_summary import main, run

if __name__ == "__main__":
    run()
