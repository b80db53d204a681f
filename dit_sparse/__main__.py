"""``python -m dit_sparse``: the ``dit-sparse`` command line."""

from dit_sparse.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
