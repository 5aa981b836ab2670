"""`python -m drsf_kit ...` is the same as the `drsf` command (and works under torchrun)."""

from drsf_kit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
