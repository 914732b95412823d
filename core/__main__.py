from .cli import main

if __name__ == "__main__":  # guarded: the cohort generator's worker processes re-import the main module
    raise SystemExit(main())
