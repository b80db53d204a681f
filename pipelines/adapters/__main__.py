"""``python -m dit_sparse.pipelines.adapters``: regenerate docs/models.md."""

import sys

from .models_table import main

sys.exit(main())
