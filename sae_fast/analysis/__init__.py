"""One module per analysis of the seed-dependence study."""
