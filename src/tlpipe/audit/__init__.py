"""Data audit of a split folder: frozen-backbone features, label issues (cleanlab), cross-split near-duplicates,
per-class outliers and class balance. Reports only: nothing here changes what training reads."""
