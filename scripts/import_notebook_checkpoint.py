"""`python scripts/import_notebook_checkpoint.py ...`: the program, clara.cli.import_notebook_checkpoint (see its --help)."""
from clara.cli.import_notebook_checkpoint import main, run

if __name__ == "__main__":
    run()
