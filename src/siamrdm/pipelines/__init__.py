"""What the commands run end to end: the challenge, cross-set and fold evaluation, reports, plots, the speed
benchmark (bench)."""
