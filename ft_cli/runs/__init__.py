"""The run-directory contract: the run file, output checks, config hash, status and lock that train, resume, eval, merge and export share."""
