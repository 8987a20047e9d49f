"""Background work: job runners that claim jobs from the index, and their schedule."""
