"""What a run did and how it is shown: results, progress, the status file and report."""
