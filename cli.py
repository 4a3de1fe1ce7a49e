"""Run the command-line tool from a source checkout: `python cli.py …` ≡ `wn-export …`.

The click application lives in `wn_export/cli.py` (the installed `wn-export` script points there); this
file is not installed."""

from wn_export.cli import main

if __name__ == "__main__":
    main()
